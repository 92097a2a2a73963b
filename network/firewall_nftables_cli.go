package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"

	"sigs.k8s.io/knftables"
)

// ErrNFTNotInstalled reports that the nft binary is not installed.
var ErrNFTNotInstalled = errors.New("nft is not installed (Debian package nftables)")

// nftCLI is the real NFTables: knftables over the nft binary, for the
// transactions and for the listings (with one knftables.Interface per
// table, which its List methods need), and the text listing of a table for
// what knftables does not report (nftListing).
type nftCLI struct {
	knftables.Interface // no table of its own: transactions span both tables
	path                string

	mu     sync.Mutex
	tables map[string]knftables.Interface // "family name" -> that table's knftables
}

// NewNFTables returns the real nftables client: knftables over the nft
// binary, for any table. It fails with ErrNFTNotInstalled without nft, and
// when nft cannot be used (too old, no permission).
func NewNFTables() (NFTables, error) {
	path, err := exec.LookPath("nft")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNFTNotInstalled, err)
	}
	nft, err := knftables.New("", "")
	if err != nil {
		return nil, fmt.Errorf("initialising nftables: %w", err)
	}
	return &nftCLI{Interface: nft, path: path, tables: map[string]knftables.Interface{}}, nil
}

// table returns the knftables.Interface of table family name, creating it
// on first use.
func (n *nftCLI) table(family knftables.Family, name string) (knftables.Interface, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	key := string(family) + " " + name
	if nft := n.tables[key]; nft != nil {
		return nft, nil
	}
	nft, err := knftables.New(family, name)
	if err != nil {
		return nil, fmt.Errorf("initialising nftables for table %s: %w", key, err)
	}
	n.tables[key] = nft
	return nft, nil
}

// ListTable lists the table through knftables and reads the rest from
// `nft --handle --terse list table FAMILY NAME` (listNFTTable).
func (n *nftCLI) ListTable(ctx context.Context, family knftables.Family, name string) (*NFTTableState, error) {
	nft, err := n.table(family, name)
	if err != nil {
		return nil, err
	}
	return listNFTTable(ctx, nft, func(ctx context.Context) (*nftListing, error) {
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, n.path, "--handle", "--terse", "list", "table", string(family), name)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("nft list table %s %s: %w: %s", family, name, err, strings.TrimSpace(stderr.String()))
		}
		return readNFTListing(stdout.String())
	})
}

// listNFTTable returns the table nft (a knftables.Interface for one table)
// lists; nil, without an error, when it does not exist. knftables answers
// whether the table exists (IsNotFound), which chains and other objects it
// holds (ListAll), and which rules each chain holds, in order (ListRules,
// by handle). read supplies what knftables does not report (nftListing);
// when it fails, knftables is asked again whether the table was deleted
// meanwhile. Objects that appear between the reads are seen by the next
// listing; a rule deleted between them is left out.
func listNFTTable(ctx context.Context, nft knftables.Interface, read func(context.Context) (*nftListing, error)) (*NFTTableState, error) {
	objects, err := nft.ListAll(ctx)
	if err != nil {
		return nil, unlessNotFound(err)
	}
	rules, err := nft.ListRules(ctx, "")
	if err != nil {
		return nil, unlessNotFound(err)
	}
	listing, err := read(ctx)
	if err != nil {
		if _, again := nft.ListAll(ctx); knftables.IsNotFound(again) {
			return nil, nil
		}
		return nil, err
	}
	s := &NFTTableState{Others: slices.Clone(listing.flags)}
	for _, kind := range slices.Sorted(maps.Keys(objects)) {
		for _, name := range slices.Sorted(slices.Values(objects[kind])) {
			switch kind {
			case "table":
			case "chain":
				s.Chains = append(s.Chains, NFTChainState{Name: name, Spec: listing.chains[name]})
			default:
				s.Others = append(s.Others, kind+" "+name)
			}
		}
	}
	for _, r := range rules {
		c := s.chain(r.Chain)
		if r.Handle == nil || c == nil {
			continue
		}
		if text, ok := listing.rules[*r.Handle]; ok {
			c.Rules = append(c.Rules, text)
		}
	}
	return s, nil
}

// unlessNotFound is err, or nil when knftables says the table (or chain)
// does not exist.
func unlessNotFound(err error) error {
	if knftables.IsNotFound(err) {
		return nil
	}
	return err
}

// nftListing is what flanneld still reads from nft's text listing of a
// table, because knftables does not report it: its List and ListAll name a
// table's objects, but not a base chain's type, hook, priority and policy
// (the JSON listing has the priority as a number, where nft prints
// "srcnat" or "filter + 10"), nor the table's flags (a dormant table's
// rules do nothing); its ListRules fills only each rule's Handle and
// Comment, not the rule itself, and a rule replaced in place (`nft replace
// rule`) keeps both, so only the text tells that it changed.
type nftListing struct {
	flags  []string          // the table's "flags ..." lines
	chains map[string]string // chain name -> its base-chain line, "" for a regular chain
	rules  map[int]string    // rule handle -> the rule with its comment, as nft prints it
}

// readNFTListing reads the output of `nft --handle list table`. It relies
// on the layout nft prints: the table's attributes and blocks indented by
// one tab, a block's contents by two, every rule on one line ending in
// "# handle N". Everything else (comments, sets, their elements) is left
// out: the objects are known from knftables.
func readNFTListing(text string) (*nftListing, error) {
	l := &nftListing{chains: map[string]string{}, rules: map[int]string{}}
	if !strings.HasPrefix(text, "table ") {
		return nil, fmt.Errorf("unexpected nft listing %q", text)
	}
	chain := "" // the chain whose block is being read
	for _, raw := range strings.Split(text, "\n") {
		depth := len(raw) - len(strings.TrimLeft(raw, "\t"))
		line, handle := cutNFTHandle(strings.TrimSpace(raw))
		switch {
		case depth == 1:
			chain = ""
			if name, ok := strings.CutPrefix(line, "chain "); ok && strings.HasSuffix(name, " {") {
				chain = strings.TrimSuffix(name, " {")
				l.chains[chain] = ""
			} else if strings.HasPrefix(line, "flags ") {
				l.flags = append(l.flags, line)
			}
		case depth != 2 || chain == "":
		case strings.HasPrefix(line, "type ") && strings.Contains(line, " hook "):
			l.chains[chain] = line
		case handle > 0:
			l.rules[handle] = line
		}
	}
	return l, nil
}

// cutNFTHandle splits the " # handle N" that nft --handle appends to a
// line, after any comment, from it; handle is 0 without one.
func cutNFTHandle(line string) (rest string, handle int) {
	i := strings.LastIndex(line, " # handle ")
	if i < 0 {
		return line, 0
	}
	n, err := strconv.Atoi(line[i+len(" # handle "):])
	if err != nil || n <= 0 {
		return line, 0
	}
	return line[:i], n
}
