package kube
import ("testing"; "k8s.io/client-go/kubernetes/fake")
func TestProbe(t *testing.T){ _ = fake.NewClientset() }
