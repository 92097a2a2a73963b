package kube

import (
	"bytes"
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flanneld/flanneld/subnet"
)

// A Node list of a large cluster is mostly what flanneld never reads:
// kubelet-sized Nodes carry labels, conditions, addresses and dozens of
// image names. decodeNodeList reads a protobuf NodeList and keeps only the
// fields below, skipping everything else without allocating it, so that
// listing 5,000 Nodes does not first build 5,000 whole Node objects.
//
// Field numbers from k8s.io/api/core/v1 and k8s.io/apimachinery generated.proto.
const (
	unknownRaw = 2 // runtime.Unknown: the encoded object

	nodeListMetadata = 1 // NodeList: ListMeta
	nodeListItems    = 2 // NodeList: repeated Node

	listMetaResourceVersion    = 2
	listMetaContinue           = 3
	listMetaRemainingItemCount = 4

	nodeMetadata = 1 // Node: ObjectMeta
	nodeSpec     = 2 // Node: NodeSpec

	objectMetaName              = 1
	objectMetaUID               = 5
	objectMetaResourceVersion   = 6
	objectMetaCreationTimestamp = 8  // Time
	objectMetaAnnotations       = 12 // map<string, string>

	timeSeconds = 1

	mapEntryKey   = 1
	mapEntryValue = 2

	nodeSpecPodCIDR  = 1
	nodeSpecPodCIDRs = 7
)

// protobufMagic starts every object the API server encodes as protobuf.
var protobufMagic = []byte("k8s\x00")

func isProtobuf(body []byte) bool { return bytes.HasPrefix(body, protobufMagic) }

// decodeNodeList decodes an API server protobuf response holding a NodeList,
// keeping of each Node its name, UID, resourceVersion, creationTimestamp,
// annotations and podCIDRs. An annotation value longer than
// subnet.MaxAnnotationBytes is kept cut to one byte more, enough to tell
// that it is too long: a Node's annotations may take 256 KiB.
func decodeNodeList(body []byte) (*v1.NodeList, error) {
	if !isProtobuf(body) {
		return nil, errors.New("decode node list: not a protobuf response")
	}
	var raw []byte
	err := eachField(body[len(protobufMagic):], func(num protowire.Number, typ protowire.Type, b []byte) error {
		if num == unknownRaw && typ == protowire.BytesType {
			raw = b
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("decode node list: %w", err)
	}
	list := &v1.NodeList{}
	err = eachField(raw, func(num protowire.Number, typ protowire.Type, b []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case nodeListMetadata:
			return decodeListMeta(b, list)
		case nodeListItems:
			if list.Items == nil {
				list.Items = make([]v1.Node, 0, 64+int(ptrOr(list.RemainingItemCount, 0)))
			}
			list.Items = append(list.Items, v1.Node{})
			return decodeNode(b, &list.Items[len(list.Items)-1])
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("decode node list: %w", err)
	}
	return list, nil
}

func decodeListMeta(b []byte, list *v1.NodeList) error {
	return eachField(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		switch {
		case num == listMetaResourceVersion && typ == protowire.BytesType:
			list.ResourceVersion = string(v)
		case num == listMetaContinue && typ == protowire.BytesType:
			list.Continue = string(v)
		case num == listMetaRemainingItemCount && typ == protowire.VarintType:
			n, _ := protowire.ConsumeVarint(v)
			count := int64(n)
			list.RemainingItemCount = &count
		}
		return nil
	})
}

func decodeNode(b []byte, n *v1.Node) error {
	return eachField(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case nodeMetadata:
			return decodeObjectMeta(v, n)
		case nodeSpec:
			return eachField(v, func(num protowire.Number, typ protowire.Type, v []byte) error {
				switch {
				case typ != protowire.BytesType:
				case num == nodeSpecPodCIDR:
					n.Spec.PodCIDR = string(v)
				case num == nodeSpecPodCIDRs:
					n.Spec.PodCIDRs = append(n.Spec.PodCIDRs, string(v))
				}
				return nil
			})
		}
		return nil
	})
}

func decodeObjectMeta(b []byte, n *v1.Node) error {
	return eachField(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case objectMetaName:
			n.Name = string(v)
		case objectMetaUID:
			n.UID = types.UID(v)
		case objectMetaResourceVersion:
			n.ResourceVersion = string(v)
		case objectMetaCreationTimestamp:
			return eachField(v, func(num protowire.Number, typ protowire.Type, v []byte) error {
				if num == timeSeconds && typ == protowire.VarintType {
					secs, _ := protowire.ConsumeVarint(v)
					n.CreationTimestamp = metav1.Unix(int64(secs), 0)
				}
				return nil
			})
		case objectMetaAnnotations:
			var key, value string
			err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte) error {
				switch {
				case typ != protowire.BytesType:
				case num == mapEntryKey:
					key = string(v)
				case num == mapEntryValue:
					value = string(v[:min(len(v), subnet.MaxAnnotationBytes+1)])
				}
				return nil
			})
			if err != nil {
				return err
			}
			if n.Annotations == nil {
				n.Annotations = make(map[string]string, 8)
			}
			n.Annotations[key] = value
		}
		return nil
	})
}

// eachField calls fn for every field of the protobuf message b, in order,
// with the field's payload: the bytes of a length-delimited field, the
// encoded varint of a varint field, the raw bytes of a fixed-size one.
// Groups are skipped.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v []byte
		switch typ {
		case protowire.BytesType:
			var m int
			v, m = protowire.ConsumeBytes(b)
			n = m
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n >= 0 {
				v = b[:n]
			}
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := fn(num, typ, v); err != nil {
			return err
		}
	}
	return nil
}
