package kube

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/ewgate/ewgate/registrar/kube/kapi"
)

// The registrar's types are Kubernetes-shaped (their JSON is the objects' JSON), so conversion
// to and from the API's JSON objects (kapi.Object) is a JSON round trip.

// fromUnstructured decodes u into a new object of the registrar's type.
func fromObject[T any](u kapi.Object, into T) (T, error) {
	data, err := json.Marshal(u)
	if err != nil {
		return into, err
	}
	if err := json.Unmarshal(data, into); err != nil {
		return into, fmt.Errorf("registrar/kube: decode %s %s/%s: %w", u.Kind(), u.Namespace(), u.Name(), err)
	}
	return into, nil
}

// toMap encodes a registrar object as the JSON map of the Kubernetes object, with numbers
// kept as json.Number (exact, and encoded again as they are).
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
func createBody(m map[string]any) kapi.Object {
	meta, _ := m["metadata"].(map[string]any)
	for _, k := range []string{"resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"} {
		delete(meta, k)
	}
	delete(m, "status")
	return kapi.Object(m)
}

// managedMeta are the metadata fields the registrar's types carry and Update replaces; the rest
// of the stored object's metadata (finalizers, managedFields, other owners' fields) is kept.
var managedMeta = []string{"labels", "annotations", "ownerReferences"}

// updateBody overlays what the caller manages (metadata above and spec) on base, the object
// as last seen, so that an Update changes nothing it does not model.
func updateBody(base kapi.Object, m map[string]any, rv string) kapi.Object {
	body := base.DeepCopy()
	meta, _ := body["metadata"].(map[string]any)
	if meta == nil {
		meta = map[string]any{}
		body["metadata"] = meta
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
		body["spec"] = spec
	} else {
		delete(body, "spec")
	}
	return body
}

// statusBody puts the caller's status on base, for the status subresource.
func statusBody(base kapi.Object, m map[string]any, rv string) kapi.Object {
	body := base.DeepCopy()
	if st, ok := m["status"]; ok {
		body["status"] = st
	} else {
		delete(body, "status")
	}
	if meta, ok := body["metadata"].(map[string]any); ok {
		meta["resourceVersion"] = rv
	}
	return body
}
