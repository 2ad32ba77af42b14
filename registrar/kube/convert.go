package kube

import (
	"bytes"
	"encoding/json"
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The registrar's types are Kubernetes-shaped (their JSON is the objects' JSON), so conversion
// to and from the dynamic client's unstructured objects is a JSON round trip.

// GVRs of the Istio kinds the store serves.
var (
	workloadEntriesGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "workloadentries"}
	workloadGroupsGVR  = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "workloadgroups"}
)

// fromUnstructured decodes u into a new object of the registrar's type.
func fromUnstructured[T any](u *unstructured.Unstructured, into T) (T, error) {
	data, err := json.Marshal(u.Object)
	if err != nil {
		return into, err
	}
	if err := json.Unmarshal(data, into); err != nil {
		return into, fmt.Errorf("registrar/kube: decode %s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	return into, nil
}

// toMap encodes a registrar object as the JSON map of the Kubernetes object, with numbers
// kept as json.Number (which unstructured objects deep-copy and encode as they are).
func toMap(obj any, apiVersion, kind string) (map[string]any, error) {
	data, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	m["apiVersion"], m["kind"] = apiVersion, kind
	return m, nil
}

// createBody is what Create sends: the caller's metadata without the server-set fields (the API
// server refuses a create that carries a resourceVersion), and no status (the status
// subresource ignores it on create anyway).
func createBody(m map[string]any) *unstructured.Unstructured {
	meta, _ := m["metadata"].(map[string]any)
	for _, k := range []string{"resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"} {
		delete(meta, k)
	}
	delete(m, "status")
	return &unstructured.Unstructured{Object: m}
}

// managedMeta are the metadata fields the registrar's types carry and Update replaces; the rest
// of the stored object's metadata (finalizers, managedFields, other owners' fields) is kept.
var managedMeta = []string{"labels", "annotations", "ownerReferences"}

// updateBody overlays what the caller manages (metadata above and spec) on base, the object
// as last seen, so that an Update changes nothing it does not model.
func updateBody(base *unstructured.Unstructured, m map[string]any, rv string) *unstructured.Unstructured {
	body := base.DeepCopy()
	meta, _ := body.Object["metadata"].(map[string]any)
	if meta == nil {
		meta = map[string]any{}
		body.Object["metadata"] = meta
	}
	in, _ := m["metadata"].(map[string]any)
	for _, k := range managedMeta {
		if v, ok := in[k]; ok {
			meta[k] = v
		} else {
			delete(meta, k)
		}
	}
	if uid, ok := in["uid"]; ok {
		meta["uid"] = uid // a UID that is not the stored one's makes the API server answer 409
	}
	meta["resourceVersion"] = rv
	if spec, ok := m["spec"]; ok {
		body.Object["spec"] = spec
	} else {
		delete(body.Object, "spec")
	}
	return body
}

// statusBody puts the caller's status on base, for the status subresource.
func statusBody(base *unstructured.Unstructured, m map[string]any, rv string) *unstructured.Unstructured {
	body := base.DeepCopy()
	if st, ok := m["status"]; ok {
		body.Object["status"] = st
	} else {
		delete(body.Object, "status")
	}
	if meta, ok := body.Object["metadata"].(map[string]any); ok {
		meta["resourceVersion"] = rv
	}
	return body
}
