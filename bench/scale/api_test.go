package scale

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flanneld/flanneld/e2e/lab"
)

const (
	// apiWorkers is how many creates or deletes are in flight at once.
	apiWorkers = 32
	// apiCallTimeout bounds one create, delete or LIST.
	apiCallTimeout = 2 * time.Minute
)

// adminClient is a cluster-admin client speaking protobuf, dialling from
// inside namespace ns, with a rate limit high enough not to be the
// bottleneck when creating thousands of Nodes.
func adminClient(l *lab.Lab, ns string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", l.AdminKubeconfig())
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", l.AdminKubeconfig(), err)
	}
	cfg.Dial = lab.DialContextIn(ns)
	cfg.QPS, cfg.Burst = 2000, 2000
	cfg.Timeout = apiCallTimeout
	cfg.UserAgent = "flanneld-bench-scale"
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf
	return kubernetes.NewForConfig(cfg)
}

// forEachConcurrently calls fn for every index in [from, to] with
// apiWorkers goroutines and returns the errors joined (at most a few).
func forEachConcurrently(ctx context.Context, from, to int, fn func(ctx context.Context, i int) error) error {
	next := make(chan int)
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for range min(apiWorkers, to-from+1) {
		wg.Go(func() {
			for i := range next {
				if err := fn(ctx, i); err != nil {
					mu.Lock()
					if len(errs) < 5 {
						errs = append(errs, err)
					}
					mu.Unlock()
				}
			}
		})
	}
feed:
	for i := from; i <= to; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// createPeers creates the Nodes of peers from..to (see peerAt), each with
// pad bytes of annotations flanneld does not read.
func createPeers(ctx context.Context, c kubernetes.Interface, from, to, pad int) error {
	return forEachConcurrently(ctx, from, to, func(ctx context.Context, i int) error {
		ctx, cancel := context.WithTimeout(ctx, apiCallTimeout)
		defer cancel()
		obj := peerAt(i).nodeObject()
		padAnnotations(obj, pad)
		created, err := c.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("creating Node %s: %w", obj.Name, err)
		}
		if len(created.Status.Images) == 0 {
			// The API server dropped the status on create: set it.
			created.Status = obj.Status
			if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("setting the status of Node %s: %w", obj.Name, err)
			}
		}
		return nil
	})
}

// deletePeers deletes the Nodes of peers from..to.
func deletePeers(ctx context.Context, c kubernetes.Interface, from, to int) error {
	return forEachConcurrently(ctx, from, to, func(ctx context.Context, i int) error {
		ctx, cancel := context.WithTimeout(ctx, apiCallTimeout)
		defer cancel()
		name := peerAt(i).name
		if err := c.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("deleting Node %s: %w", name, err)
		}
		return nil
	})
}

// listFloor is the first half of the floor: how long the API server takes
// to hand out every Node in one protobuf LIST (no limit, so no paging),
// received in full but not decoded. It returns the median of rounds lists
// and the size of one response.
func listFloor(ctx context.Context, c *kubernetes.Clientset, rounds int) (time.Duration, int, error) {
	rc := c.CoreV1().RESTClient()
	// Open the connection (TLS handshake) before timing.
	if _, err := rc.Get().Resource("nodes").Param("limit", "1").DoRaw(ctx); err != nil {
		return 0, 0, fmt.Errorf("warming up the LIST client: %w", err)
	}
	var (
		samples []time.Duration
		size    int
	)
	for range rounds {
		ctx, cancel := context.WithTimeout(ctx, apiCallTimeout)
		start := time.Now()
		body, err := rc.Get().Resource("nodes").SetHeader("Accept", runtime.ContentTypeProtobuf).DoRaw(ctx)
		d := time.Since(start)
		cancel()
		if err != nil {
			return 0, 0, fmt.Errorf("listing Nodes: %w", err)
		}
		// Protobuf responses start with the magic "k8s\x00".
		if !bytes.HasPrefix(body, []byte("k8s\x00")) {
			return 0, 0, fmt.Errorf("the LIST answer is not protobuf (starts with %q)", body[:min(len(body), 16)])
		}
		samples = append(samples, d)
		size = len(body)
	}
	return median(samples), size, nil
}

// checkStatusKept reads one created peer back and reports whether its
// status (images) survived, as a sanity check of the objects' size.
func checkStatusKept(ctx context.Context, c kubernetes.Interface, i int) error {
	ctx, cancel := context.WithTimeout(ctx, apiCallTimeout)
	defer cancel()
	n, err := c.CoreV1().Nodes().Get(ctx, peerAt(i).name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if len(n.Status.Images) != imagesPerNode || len(n.Status.Conditions) != 4 {
		return fmt.Errorf("Node %s has %d images and %d conditions, want %d and 4",
			n.Name, len(n.Status.Images), len(n.Status.Conditions), imagesPerNode)
	}
	return nil
}
