package lab

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Image is flanneld's image built for a test (BuildImage).
type Image struct {
	Archive  string // the OCI image archive
	Ref      string // the image reference it is named by
	Flanneld string // the copy of bin/flanneld inside it
	CNI      string // the copy of bin/flannel inside it
	Version  string // what flanneld --version prints
}

// BuildImage builds the image named ref into dir as `make image` does
// (hack/build-image.sh) from copies of bin/flanneld and bin/flannel. It
// skips the test when mmdebstrap or umoci is missing, or when the image's
// Debian base is not cached and the Debian mirror cannot be reached.
func BuildImage(t testing.TB, dir, ref string) Image {
	t.Helper()
	for _, tool := range []string{"mmdebstrap", "umoci"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s is missing (hack/install-deps.sh installs mmdebstrap and umoci)", tool)
		}
	}
	root := mustRepoRoot(t)
	img := Image{
		Archive:  filepath.Join(dir, "flanneld-oci.tar"),
		Ref:      ref,
		Flanneld: filepath.Join(dir, "flanneld"),
		CNI:      filepath.Join(dir, "flannel"),
	}
	// Copies, so a concurrent `make build` cannot change them under the test.
	for src, dst := range map[string]string{RequireBinary(t, BinaryFlanneld): img.Flanneld, RequireBinary(t, BinaryFlannelCNI): img.CNI} {
		if out, err := exec.Command("cp", src, dst).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v: %s", src, err, out)
		}
	}
	out, err := exec.Command(img.Flanneld, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", img.Flanneld, err)
	}
	img.Version = strings.TrimSpace(string(out))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, filepath.Join(root, "hack", "build-image.sh"))
	build.Env = append(os.Environ(), "IMAGE="+ref, "IMAGE_OUT="+img.Archive, "VERSION="+img.Version,
		"FLANNELD_BIN="+img.Flanneld, "FLANNEL_CNI_BIN="+img.CNI)
	start := time.Now()
	out, err = build.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 77 {
		t.Skipf("skipping: the image's Debian base is not cached and the Debian mirror cannot be reached:\n%s", out)
	}
	if err != nil {
		t.Fatalf("hack/build-image.sh: %v\n%s", err, out)
	}
	t.Logf("built the image %s in %v", ref, time.Since(start).Round(100*time.Millisecond))
	return img
}

// ManifestImage is the image reference Documentation/kube-flannel.yml ships.
const ManifestImage = "ghcr.io/flanneld/flanneld:latest"

// Manifest returns Documentation/kube-flannel.yml with its image replaced
// by image.
func Manifest(t testing.TB, image string) string {
	t.Helper()
	b, err := manifestYAML()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), ManifestImage) {
		t.Fatalf("Documentation/kube-flannel.yml no longer names the image %s", ManifestImage)
	}
	return strings.ReplaceAll(string(b), ManifestImage, image)
}
