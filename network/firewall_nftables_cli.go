package network

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"sigs.k8s.io/knftables"
)

// ErrNFTNotInstalled reports that the nft binary is not installed.
var ErrNFTNotInstalled = errors.New("nft is not installed (Debian package nftables)")

// nftCLI is the real NFTables: knftables for transactions, `nft list table`
// for listings.
type nftCLI struct {
	knftables.Interface
	path string
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
	return &nftCLI{Interface: nft, path: path}, nil
}

// ListTable runs `nft list table FAMILY NAME` and parses its output.
func (n *nftCLI) ListTable(ctx context.Context, family knftables.Family, name string) (*NFTTableState, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, n.path, "list", "table", string(family), name)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "No such file or directory") {
			return nil, nil
		}
		return nil, fmt.Errorf("nft list table %s %s: %w: %s", family, name, err, msg)
	}
	return parseNFTListing(stdout.String())
}

// parseNFTListing parses the output of `nft list table` (with or without
// handles): the chains with their base-chain line and rules, and the
// table's other objects and attributes. Comments of the table and its
// chains are left out.
func parseNFTListing(text string) (*NFTTableState, error) {
	s := &NFTTableState{}
	depth := 0
	var chain *NFTChainState // the chain being read, at depth 2
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(stripNFTHandle(sc.Text()))
		if line == "" {
			continue
		}
		opens, closes := countNFTBraces(line)
		switch {
		case depth == 0:
			if !strings.HasPrefix(line, "table ") || opens != 1 {
				return nil, fmt.Errorf("unexpected line %q before the table", line)
			}
		case depth == 1 && line == "}":
		case depth == 1 && opens > closes:
			// A block: "chain NAME {", "set NAME {", ...
			kind, rest, _ := strings.Cut(strings.TrimSuffix(line, "{"), " ")
			name := strings.TrimSpace(rest)
			if kind == "chain" {
				s.Chains = append(s.Chains, NFTChainState{Name: name})
				chain = &s.Chains[len(s.Chains)-1]
			} else {
				s.Others = append(s.Others, kind+" "+name)
			}
		case depth == 1:
			if !strings.HasPrefix(line, "comment ") {
				s.Others = append(s.Others, line)
			}
		case depth == 2 && chain != nil && line == "}":
			chain = nil
		case depth == 2 && chain != nil:
			switch {
			case strings.HasPrefix(line, "comment "):
			case strings.HasPrefix(line, "type ") && strings.Contains(line, " hook "):
				chain.Spec = line
			default:
				chain.Rules = append(chain.Rules, line)
			}
		}
		depth += opens - closes
		if depth < 0 {
			return nil, fmt.Errorf("unbalanced braces at %q", line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if depth != 0 {
		return nil, errors.New("unbalanced braces in the listing")
	}
	return s, nil
}

// stripNFTHandle removes a trailing "# handle N" that `nft -a` prints.
func stripNFTHandle(line string) string {
	if i := strings.LastIndex(line, " # handle "); i >= 0 && !inNFTQuote(line, i) {
		return line[:i]
	}
	return line
}

// countNFTBraces counts the braces of line outside double quotes.
func countNFTBraces(line string) (opens, closes int) {
	quoted := false
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == '{' && !quoted:
			opens++
		case c == '}' && !quoted:
			closes++
		}
	}
	return opens, closes
}

// inNFTQuote reports whether position pos of line is inside double quotes.
func inNFTQuote(line string, pos int) bool {
	quoted := false
	for i := 0; i < pos && i < len(line); i++ {
		switch line[i] {
		case '\\':
			if quoted {
				i++
			}
		case '"':
			quoted = !quoted
		}
	}
	return quoted
}
