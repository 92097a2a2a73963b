package kube

import (
	"context"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A page of Nodes is read whole before it is decoded, and a Node may carry
// 256 KiB of annotations flanneld never reads (tools keep state there), so
// pages are sized by bytes, not by count: the first page is small, and each
// later one holds about pageBudget bytes at the bytes per Node seen so far,
// between minPageNodes and maxPageNodes Nodes. Kubelet-sized Nodes (some
// 7 KiB) get pages of 500, so a 5,000-node cluster costs 11 requests (each
// page of a consistent list costs the API server a read from etcd: pages of
// 100 took start-up at 5,000 Nodes from 2 to 9 s); 200 Nodes of 250 KB
// start flanneld at 85 MiB instead of the 148 MiB of pages of 500.
const (
	firstPageNodes = 50
	minPageNodes   = 10
	maxPageNodes   = 500
	pageBudget     = 8 << 20
)

// pageLimit is the size of the next page after seen Nodes took bytes.
func pageLimit(seen, bytes int64) int64 {
	if seen == 0 || bytes <= 0 {
		return firstPageNodes
	}
	return min(max(pageBudget*seen/bytes, minPageNodes), maxPageNodes)
}

// pageNodes lists the Nodes with a consistent read, page by page, handing
// each page to fn; it returns the list's resource version.
func pageNodes(ctx context.Context, client Client, o metav1.ListOptions, fn func(page *v1.NodeList)) (string, error) {
	// A paged list needs a consistent read, not "any version" (RV 0).
	o.ResourceVersion, o.ResourceVersionMatch = "", ""
	var seen, bytes int64
	for {
		o.Limit = pageLimit(seen, bytes)
		page, size, err := client.ListNodes(ctx, o)
		if err != nil {
			return "", err
		}
		if size > 0 {
			seen, bytes = seen+int64(len(page.Items)), bytes+int64(size)
		}
		fn(page)
		if page.Continue == "" {
			return page.ResourceVersion, nil
		}
		o.Continue = page.Continue
	}
}
