package controlplane

import (
	"sort"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// NameTableType is the type URL of Istio's DNS name table (NDS), which pilot-agent requests on
// its ADS stream when its DNS proxy is on (ISTIO_META_DNS_CAPTURE=true).
const NameTableType = "type.googleapis.com/istio.networking.nds.v1.NameTable"

// The NameTable message is defined in Istio's main module (pkg/dns/proto/nds.proto), not in
// istio.io/api. Rather than pulling istio.io/istio into the module graph, or generating code
// with protoc (a build-time tool), the same message is described here at run time: a
// FileDescriptorProto of the same file name, package, messages, field names and numbers, built
// into a dynamicpb message type. A dynamicpb message is a proto.Message, so the xDS cache wraps
// it in an Any exactly like a generated one, and the bytes are those of istiod's NameTable:
//
//	message NameTable {
//	  message NameInfo {
//	    repeated string ips = 1;
//	    string registry = 2;
//	    string shortname = 3;
//	    string namespace = 4;
//	    repeated string alt_hosts = 5 [deprecated = true];
//	  }
//	  map<string, NameInfo> table = 1;
//	  NameInfo name_info = 2;
//	}
var ndsTypes = sync.OnceValue(func() ndsDescriptors {
	fd, err := protodesc.NewFile(ndsFileProto(), nil)
	if err != nil {
		panic("controlplane: nds descriptor: " + err.Error()) // a constant: covered by the tests
	}
	nt := fd.Messages().ByName("NameTable")
	return ndsDescriptors{
		file:      fd,
		nameTable: nt,
		nameInfo:  nt.Messages().ByName("NameInfo"),
		tableF:    nt.Fields().ByName("table"),
	}
})

type ndsDescriptors struct {
	file      protoreflect.FileDescriptor
	nameTable protoreflect.MessageDescriptor
	nameInfo  protoreflect.MessageDescriptor
	tableF    protoreflect.FieldDescriptor
}

func ndsFileProto() *descriptorpb.FileDescriptorProto {
	s := proto.String
	lbl := func(l descriptorpb.FieldDescriptorProto_Label) *descriptorpb.FieldDescriptorProto_Label { return &l }
	typ := func(t descriptorpb.FieldDescriptorProto_Type) *descriptorpb.FieldDescriptorProto_Type { return &t }
	str := func(name, json string, num int32, l descriptorpb.FieldDescriptorProto_Label) *descriptorpb.FieldDescriptorProto {
		return &descriptorpb.FieldDescriptorProto{Name: s(name), JsonName: s(json), Number: proto.Int32(num),
			Label: lbl(l), Type: typ(descriptorpb.FieldDescriptorProto_TYPE_STRING)}
	}
	optional, repeated := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL, descriptorpb.FieldDescriptorProto_LABEL_REPEATED
	altHosts := str("alt_hosts", "altHosts", 5, repeated)
	altHosts.Options = &descriptorpb.FieldOptions{Deprecated: proto.Bool(true)}
	nameInfo := &descriptorpb.DescriptorProto{
		Name: s("NameInfo"),
		Field: []*descriptorpb.FieldDescriptorProto{
			str("ips", "ips", 1, repeated),
			str("registry", "registry", 2, optional),
			str("shortname", "shortname", 3, optional),
			str("namespace", "namespace", 4, optional),
			altHosts,
		},
	}
	tableEntry := &descriptorpb.DescriptorProto{
		Name: s("TableEntry"),
		Field: []*descriptorpb.FieldDescriptorProto{
			str("key", "key", 1, optional),
			{Name: s("value"), JsonName: s("value"), Number: proto.Int32(2), Label: lbl(optional),
				Type: typ(descriptorpb.FieldDescriptorProto_TYPE_MESSAGE), TypeName: s(".istio.networking.nds.v1.NameTable.NameInfo")},
		},
		Options: &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)},
	}
	return &descriptorpb.FileDescriptorProto{
		Name:    s("pkg/dns/proto/nds.proto"),
		Package: s("istio.networking.nds.v1"),
		Syntax:  s("proto3"),
		Options: &descriptorpb.FileOptions{GoPackage: s("istio.io/istio/pkg/dns/proto/istio_networking_nds_v1")},
		MessageType: []*descriptorpb.DescriptorProto{{
			Name:       s("NameTable"),
			NestedType: []*descriptorpb.DescriptorProto{nameInfo, tableEntry},
			Field: []*descriptorpb.FieldDescriptorProto{
				{Name: s("table"), JsonName: s("table"), Number: proto.Int32(1), Label: lbl(repeated),
					Type: typ(descriptorpb.FieldDescriptorProto_TYPE_MESSAGE), TypeName: s(".istio.networking.nds.v1.NameTable.TableEntry")},
				{Name: s("name_info"), JsonName: s("nameInfo"), Number: proto.Int32(2), Label: lbl(optional),
					Type: typ(descriptorpb.FieldDescriptorProto_TYPE_MESSAGE), TypeName: s(".istio.networking.nds.v1.NameTable.NameInfo")},
			},
		}},
	}
}

// nameInfo is one entry of the name table.
type nameInfo struct {
	IPs       []string
	Registry  string // Kubernetes (the agent then answers the short names too) or External
	Shortname string // the Kubernetes service name; Kubernetes registry only
	Namespace string // its namespace; Kubernetes registry only
}

// nameTableMessage is the table as Istio's NameTable: a dynamicpb message of the descriptor
// above whose content is the hand-encoded table (encodeNameTable) held as its unknown fields.
// Marshalling it writes those bytes as they are, so the xDS cache's marshal is a copy, and no
// map of 10,000 reflective messages is built per push; the bytes are what the deterministic
// marshal of the same table built field by field gives (nds_test.go compares the two).
func nameTableMessage(table map[string]nameInfo) proto.Message {
	return nameTableFromBytes(encodeNameTable(table))
}

func nameTableFromBytes(b []byte) proto.Message {
	m := dynamicpb.NewMessage(ndsTypes().nameTable)
	m.SetUnknown(b)
	return m
}

// encodeNameTable writes the NameTable wire form: one table (1) map entry per host in sorted
// order (a deterministic marshal sorts map keys), each with its key (1) and NameInfo value (2):
// ips (1), then registry (2), shortname (3) and namespace (4) when not empty.
func encodeNameTable(table map[string]nameInfo) []byte {
	hosts := make([]string, 0, len(table))
	for h := range table {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	var out, entry, info []byte
	for _, h := range hosts {
		ni := table[h]
		info = info[:0]
		for _, ip := range ni.IPs {
			info = appendString(info, 1, ip)
		}
		for i, v := range []string{ni.Registry, ni.Shortname, ni.Namespace} {
			if v != "" {
				info = appendString(info, protowire.Number(2+i), v)
			}
		}
		entry = appendString(entry[:0], 1, h)
		entry = protowire.AppendTag(entry, 2, protowire.BytesType)
		entry = protowire.AppendBytes(entry, info)
		out = protowire.AppendTag(out, 1, protowire.BytesType)
		out = protowire.AppendBytes(out, entry)
	}
	return out
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}
