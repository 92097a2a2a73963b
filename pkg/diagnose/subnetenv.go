package diagnose

import (
	"bufio"
	"bytes"
	"errors"
	"io/fs"
	"strings"

	"github.com/flanneld/flanneld/subnet"
)

func (b *builder) subnetEnv() {
	e := b.in.Env
	r := &b.r.SubnetEnv
	r.Path, r.Status, r.Lines = e.Path, StatusOK, []EnvLine{}
	want, err := subnet.FormatEnv(e.Expected)
	if err != nil {
		r.Status, r.Error = StatusDiffers, err.Error()
		b.problem("subnet.env: cannot compute the expected content: %v", err)
		return
	}
	switch {
	case errors.Is(e.ReadErr, fs.ErrNotExist):
		r.Status = StatusMissing
		b.problem("subnet.env: %s does not exist", e.Path)
	case e.ReadErr != nil:
		r.Status, r.Error = StatusDiffers, e.ReadErr.Error()
		b.problem("subnet.env: %v", e.ReadErr)
	}
	expected, expectedKeys := envLines(want)
	onDisk, diskKeys := envLines(e.OnDisk)
	for _, k := range diskKeys {
		if _, ok := expected[k]; !ok {
			expectedKeys = append(expectedKeys, k)
		}
	}
	for _, k := range expectedKeys {
		line := EnvLine{Key: k, Expected: expected[k], OnDisk: onDisk[k], Status: StatusOK}
		if line.Expected != line.OnDisk {
			line.Status = StatusDiffers
			if r.Status == StatusOK {
				r.Status = StatusDiffers
			}
			if e.ReadErr == nil {
				b.problem("subnet.env: %s=%s, want %s", k, line.OnDisk, line.Expected)
			}
		}
		r.Lines = append(r.Lines, line)
	}
}

// envLines reads KEY=VALUE lines (quotes removed), keys in order.
func envLines(text []byte) (map[string]string, []string) {
	values := map[string]string{}
	var keys []string
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		k, v = strings.TrimSpace(k), strings.Trim(strings.TrimSpace(v), `"'`)
		if _, seen := values[k]; !seen {
			keys = append(keys, k)
		}
		values[k] = v
	}
	return values, keys
}
