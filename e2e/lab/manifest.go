package lab

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	corev1 "k8s.io/api/core/v1"
)

// manifestYAML reads Documentation/kube-flannel.yml.
func manifestYAML() ([]byte, error) {
	root, err := FindRepoRoot()
	if err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(root, "Documentation", "kube-flannel.yml"))
}

// ManifestObjects decodes Documentation/kube-flannel.yml.
func ManifestObjects() ([]runtime.Object, error) {
	data, err := manifestYAML()
	if err != nil {
		return nil, err
	}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []runtime.Object
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		if isBlankYAML(doc) {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("decode manifest document:\n%s\n%w", doc, err)
		}
		objs = append(objs, obj)
	}
}

// isBlankYAML reports whether a YAML document holds only comments.
func isBlankYAML(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

// ManifestConfigMap returns the kube-flannel-cfg ConfigMap of the manifest.
func ManifestConfigMap() (*corev1.ConfigMap, error) {
	objs, err := ManifestObjects()
	if err != nil {
		return nil, err
	}
	for _, o := range objs {
		if cm, ok := o.(*corev1.ConfigMap); ok && cm.Name == "kube-flannel-cfg" {
			return cm, nil
		}
	}
	return nil, errors.New("the manifest has no ConfigMap kube-flannel-cfg")
}
