package network

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"
)

// TestReadNFTListing checks what flanneld reads from nft's text listing:
// the table's flags, each chain's base-chain line, each rule by handle,
// with braces, quotes and "# handle" inside comments and sets around.
func TestReadNFTListing(t *testing.T) {
	listing := `table ip flannel-ipv4 { # handle 7
	comment "rules { of } flanneld"
	flags dormant
	set blocked { # handle 3
		type ipv4_addr
		flags interval
		elements = { 192.0.2.1,
			     192.0.2.2 }
	}

	chain postrtg { # handle 1
		comment "flanneld masq"
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x00004000 == 0x00004000 return comment "flanneld masq" # handle 5
		ip saddr { 10.0.0.1, 10.0.0.2 } return comment "a # handle 9 {" # handle 4
	}

	chain helper { # handle 2
		counter packets 0 bytes 0 drop # handle 6
	}
}
`
	got, err := readNFTListing(listing)
	if err != nil {
		t.Fatal(err)
	}
	want := &nftListing{
		flags: []string{"flags dormant"},
		chains: map[string]string{
			"postrtg": "type nat hook postrouting priority srcnat; policy accept;",
			"helper":  "",
		},
		rules: map[int]string{
			5: `meta mark & 0x00004000 == 0x00004000 return comment "flanneld masq"`,
			4: `ip saddr { 10.0.0.1, 10.0.0.2 } return comment "a # handle 9 {"`,
			6: "counter packets 0 bytes 0 drop",
		},
	}
	if !slices.Equal(got.flags, want.flags) || !maps.Equal(got.chains, want.chains) || !maps.Equal(got.rules, want.rules) {
		t.Errorf("read\n%+v\nwant\n%+v", got, want)
	}
	if _, err := readNFTListing("Error: No such file or directory\n"); err == nil {
		t.Error("readNFTListing of something else than a table succeeded, want an error")
	}
}

// TestListNFTTableFromListing checks the real NFTables' way of listing a
// table (knftables for the objects and rules, the text listing for the
// rest) on what flanneld wrote: the state is the generated one.
func TestListNFTTableFromListing(t *testing.T) {
	table := nftSet(fwReferenceIPv6Config).NFTTable()
	nft := knftables.NewFake(table.Family, table.Name)
	ctx := context.Background()
	read := func(context.Context) (*nftListing, error) {
		// RenderNFT is what nft prints; add the handles knftables knows
		// (the fake numbers the rules in the order they were added).
		rules, err := nft.ListRules(ctx, "")
		if err != nil {
			return nil, err
		}
		slices.SortFunc(rules, func(a, b *knftables.Rule) int { return *a.Handle - *b.Handle })
		var lines []string
		for _, line := range strings.Split(RenderNFT(table), "\n") {
			if strings.HasPrefix(line, "\t\t") && !strings.HasPrefix(line, "\t\ttype ") {
				line += fmt.Sprintf(" # handle %d", *rules[0].Handle)
				rules = rules[1:]
			}
			lines = append(lines, line)
		}
		return readNFTListing(strings.Join(lines, "\n"))
	}
	if got, err := listNFTTable(ctx, nft, read); got != nil || err != nil {
		t.Fatalf("listing a missing table = %+v, %v; want nil, nil", got, err)
	}
	tx := nft.NewTransaction()
	addNFTTable(tx, table, false)
	if err := nft.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	got, err := listNFTTable(ctx, nft, read)
	if err != nil {
		t.Fatal(err)
	}
	if problems, _ := diffNFTTable(table, table.state(), got); len(problems) != 0 || len(got.Chains) != 2 {
		t.Errorf("listing of the IPv6 table: %+v differs from the generated one: %q", got, problems)
	}

	// A rule deleted between ListRules and the text listing is left out.
	got, err = listNFTTable(ctx, nft, func(ctx context.Context) (*nftListing, error) {
		l, err := read(ctx)
		if err == nil {
			delete(l.rules, *nft.Table.Chains[NFTForwardChain].Rules[0].Handle)
		}
		return l, err
	})
	if problems, _ := diffNFTTable(table, table.state(), got); err != nil || !slices.Equal(problems, []string{"ip6 flannel-ipv6/forward: 1 rule missing"}) {
		t.Errorf("a rule gone from the text listing: %q, %v", problems, err)
	}
	// The text listing fails: an error, unless the table was deleted
	// meanwhile (knftables says so).
	injected := errors.New("nft: killed")
	if _, err := listNFTTable(ctx, nft, func(context.Context) (*nftListing, error) { return nil, injected }); !errors.Is(err, injected) {
		t.Errorf("failed text listing: %v, want the injected error", err)
	}
	got, err = listNFTTable(ctx, nft, func(ctx context.Context) (*nftListing, error) {
		tx := nft.NewTransaction()
		tx.Delete(&knftables.Table{})
		if err := nft.Run(ctx, tx); err != nil {
			t.Fatal(err)
		}
		return nil, injected
	})
	if got != nil || err != nil {
		t.Errorf("table deleted while listing = %+v, %v; want nil, nil", got, err)
	}
}
