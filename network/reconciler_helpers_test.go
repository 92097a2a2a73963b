package network

// Sync makes desired the whole desired state (OwnedLinks included), held
// by the owner "", and applies it: what the tests of whole states need.
func (r *Reconciler) Sync(desired State, full bool) (Result, error) {
	r.mu.Lock()
	r.routes.clearDesired()
	r.neighs.clearDesired()
	r.fdbs.clearDesired()
	r.wgpeers.clearDesired()
	r.mu.Unlock()
	r.SetOwnedLinks(desired.OwnedLinks)
	r.Update("", State{}, desired)
	return r.Apply(full)
}

// clearDesired forgets every desired entry of the table.
func (t *table[K, V]) clearDesired() {
	for k := range t.desired {
		t.dirty[k] = struct{}{}
	}
	clear(t.desired)
	clear(t.holder)
	clear(t.waiting)
	t.amu.Lock()
	clear(t.failed)
	t.amu.Unlock()
}

// changed reports whether the pass changed anything in the kernel.
func changed(r Result) bool { return r.Added+r.Removed > 0 }
