package kapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// Object is a Kubernetes object as JSON decodes it (numbers as json.Number).
type Object map[string]any

func (o Object) meta() map[string]any { m, _ := o["metadata"].(map[string]any); return m }

func (o Object) str(k string) string { s, _ := o.meta()[k].(string); return s }

// Name, Namespace, UID and ResourceVersion read metadata.
func (o Object) Name() string            { return o.str("name") }
func (o Object) Namespace() string       { return o.str("namespace") }
func (o Object) UID() string             { return o.str("uid") }
func (o Object) ResourceVersion() string { return o.str("resourceVersion") }

// Kind is the object's kind.
func (o Object) Kind() string { s, _ := o["kind"].(string); return s }

// SetResourceVersion sets metadata.resourceVersion, creating metadata if need be.
func (o Object) SetResourceVersion(rv string) {
	m := o.meta()
	if m == nil {
		m = map[string]any{}
		o["metadata"] = m
	}
	m["resourceVersion"] = rv
}

// DeepCopy copies the maps and slices of o.
func (o Object) DeepCopy() Object { return deepCopy(map[string]any(o)).(map[string]any) }

func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = deepCopy(e)
		}
		return m
	case Object:
		return Object(deepCopy(map[string]any(x)).(map[string]any))
	case []any:
		s := make([]any, len(x))
		for i, e := range x {
			s[i] = deepCopy(e)
		}
		return s
	}
	return v // strings, numbers, booleans, nil
}

// List is a list answer.
type List struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
		Continue        string `json:"continue"`
	} `json:"metadata"`
	Items []Object `json:"items"`
}

// Resource is one kind's resource (group "" for the core API), cluster-wide or in a namespace.
type Resource struct {
	c                        *Client
	group, version, resource string
}

// Resource returns the resource group/version/resource.
func (c *Client) Resource(group, version, resource string) Resource {
	return Resource{c: c, group: group, version: version, resource: resource}
}

// path is the URL path of the resource in ns ("" : all namespaces), of name and sub if set.
func (r Resource) path(ns, name, sub string) string {
	p := "/apis/" + r.group + "/" + r.version
	if r.group == "" {
		p = "/api/" + r.version
	}
	if ns != "" {
		p += "/namespaces/" + url.PathEscape(ns)
	}
	p += "/" + r.resource
	if name != "" {
		p += "/" + url.PathEscape(name)
	}
	if sub != "" {
		p += "/" + sub
	}
	return p
}

// Get reads ns/name.
func (r Resource) Get(ctx context.Context, ns, name string) (Object, error) {
	var o Object
	return o, r.c.do(ctx, http.MethodGet, r.path(ns, name, ""), nil, nil, &o)
}

// ListOptions narrow a List.
type ListOptions struct {
	Limit    int64
	Continue string
}

// List lists the resource in ns ("" : all), a consistent read (no resourceVersion).
func (r Resource) List(ctx context.Context, ns string, o ListOptions) (*List, error) {
	q := url.Values{}
	if o.Limit > 0 {
		q.Set("limit", strconv.FormatInt(o.Limit, 10))
	}
	if o.Continue != "" {
		q.Set("continue", o.Continue)
	}
	var l List
	return &l, r.c.do(ctx, http.MethodGet, r.path(ns, "", ""), q, nil, &l)
}

// Create creates obj in ns; CreateSub posts body to ns/name/sub (serviceaccounts/x/token).
func (r Resource) Create(ctx context.Context, ns string, obj Object) (Object, error) {
	var out Object
	return out, r.c.do(ctx, http.MethodPost, r.path(ns, "", ""), nil, obj, &out)
}

// CreateSub posts body to the subresource sub of ns/name and decodes the answer into out.
func (r Resource) CreateSub(ctx context.Context, ns, name, sub string, body, out any) error {
	return r.c.do(ctx, http.MethodPost, r.path(ns, name, sub), nil, body, out)
}

// Put replaces ns/name with body (PUT) and decodes the answer into out.
func (r Resource) Put(ctx context.Context, ns, name string, body, out any) error {
	return r.c.do(ctx, http.MethodPut, r.path(ns, name, ""), nil, body, out)
}

// Update replaces obj (PUT); UpdateStatus replaces its status subresource.
func (r Resource) Update(ctx context.Context, obj Object) (Object, error) {
	var out Object
	return out, r.c.do(ctx, http.MethodPut, r.path(obj.Namespace(), obj.Name(), ""), nil, obj, &out)
}

// UpdateStatus replaces obj's status (PUT of the status subresource).
func (r Resource) UpdateStatus(ctx context.Context, obj Object) (Object, error) {
	var out Object
	return out, r.c.do(ctx, http.MethodPut, r.path(obj.Namespace(), obj.Name(), "status"), nil, obj, &out)
}

// Preconditions of a Delete; empty fields are not checked.
type Preconditions struct {
	UID             string `json:"uid,omitempty"`
	ResourceVersion string `json:"resourceVersion,omitempty"`
}

// Delete deletes ns/name if the preconditions hold.
func (r Resource) Delete(ctx context.Context, ns, name string, pre Preconditions) error {
	body := map[string]any{"apiVersion": "v1", "kind": "DeleteOptions"}
	if pre != (Preconditions{}) {
		body["preconditions"] = pre
	}
	return r.c.do(ctx, http.MethodDelete, r.path(ns, name, ""), nil, body, nil)
}

// Event is one watch event: ADDED, MODIFIED, DELETED, BOOKMARK or ERROR (Object then holds a
// Status: Object["code"], Object["message"]).
type Event struct {
	Type   string `json:"type"`
	Object Object `json:"object"`
}

// Watcher is an open watch. Read events from C; Stop ends it and waits for its reader.
type Watcher struct {
	C      <-chan Event // closed when the API server ends the watch, the connection breaks or Stop is called
	cancel context.CancelFunc
	done   chan struct{}
}

// Stop ends the watch and returns once its goroutine has exited.
func (w *Watcher) Stop() {
	w.cancel()
	<-w.done
}

// Watch watches the resource in ns ("" : all) from resourceVersion, with bookmarks, until the
// API server ends it, ctx ends or Stop is called.
func (r Resource) Watch(ctx context.Context, ns, resourceVersion string) (*Watcher, error) {
	q := url.Values{"watch": {"1"}, "allowWatchBookmarks": {"true"}}
	if resourceVersion != "" {
		q.Set("resourceVersion", resourceVersion)
	}
	ctx, cancel := context.WithCancel(ctx)
	resp, err := r.c.send(ctx, http.MethodGet, r.path(ns, "", ""), q, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	ch := make(chan Event)
	w := &Watcher{C: ch, cancel: cancel, done: make(chan struct{})}
	go func() { // owned by w: Stop cancels the request, which ends the read
		defer close(w.done)
		defer close(ch)
		defer resp.Body.Close()
		dec := json.NewDecoder(bufio.NewReader(resp.Body))
		dec.UseNumber()
		for {
			var ev Event
			if err := dec.Decode(&ev); err != nil {
				return
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return w, nil
}

// StatusOf reads the code and message of an ERROR event's Status object.
func StatusOf(o Object) *StatusError {
	se := &StatusError{}
	se.Reason, _ = o["reason"].(string)
	se.Message, _ = o["message"].(string)
	if n, ok := o["code"].(json.Number); ok {
		c, _ := n.Int64()
		se.Code = int(c)
	}
	if se.Code == 0 {
		se.Message = fmt.Sprintf("%v", map[string]any(o))
	}
	return se
}
