package kube

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/kube/kapi"
)

// listPage is how many objects one list request asks for (client-go's reflector: 500).
const listPage = 500

// Backoff of the reflector after a failed list or watch.
const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// errRelist ends a watch whose version the API server no longer has (410 Gone): list again.
var errRelist = errors.New("registrar/kube: watch version too old")

// runReflector keeps c equal to the API server's objects of one kind, in all namespaces, until ctx
// ends: a list (a consistent read, never the API server's possibly older watch cache, so that
// a new Store never shows objects deleted before it started), then a watch from the list's
// version, watched again from the last version seen whenever it ends, listed again when that
// version is gone.
func runReflector[T registrar.Object[T]](ctx context.Context, s *Store, r kapi.Resource, c *objectCache[T], name string) {
	backoff := minBackoff
	fail := func(err error) bool {
		s.logError(fmt.Errorf("registrar/kube: %s: %w", name, err))
		if !sleepCtx(ctx, backoff) {
			return false
		}
		backoff = min(2*backoff, maxBackoff)
		return true
	}
	for ctx.Err() == nil {
		rv, err := listInto(ctx, r, c)
		if err != nil {
			if !fail(err) {
				return
			}
			continue
		}
		backoff = minBackoff
		for ctx.Err() == nil {
			started := time.Now()
			rv, err = watchInto(ctx, r, c, rv)
			if errors.Is(err, errRelist) {
				break
			}
			if err != nil {
				if !fail(err) {
					return
				}
				continue
			}
			backoff = minBackoff
			if time.Since(started) < time.Second && !sleepCtx(ctx, minBackoff) {
				return // a watch the server ends at once is not retried in a tight loop
			}
		}
	}
}

// listInto lists every object in pages and installs the listing in c; it returns the version
// the listing is exact at.
func listInto[T registrar.Object[T]](ctx context.Context, r kapi.Resource, c *objectCache[T]) (string, error) {
	var items []kapi.Object
	opts := kapi.ListOptions{Limit: listPage}
	for {
		l, err := r.List(ctx, "", opts)
		if err != nil {
			return "", fmt.Errorf("list: %w", err)
		}
		items = append(items, l.Items...)
		if l.Metadata.Continue == "" {
			c.replace(items, l.Metadata.ResourceVersion)
			return l.Metadata.ResourceVersion, nil
		}
		opts.Continue = l.Metadata.Continue
	}
}

// watchInto applies a watch from rv to c until it ends and returns the last version seen.
func watchInto[T registrar.Object[T]](ctx context.Context, r kapi.Resource, c *objectCache[T], rv string) (string, error) {
	w, err := r.Watch(ctx, "", rv)
	if err != nil {
		if kapi.CodeOf(err) == 410 {
			return rv, errRelist
		}
		return rv, fmt.Errorf("watch: %w", err)
	}
	defer w.Stop()
	for ev := range w.C {
		switch ev.Type {
		case "ADDED", "MODIFIED":
			c.put(ev.Object, false)
		case "DELETED":
			c.put(ev.Object, true)
		case "BOOKMARK":
			c.bookmark(ev.Object.ResourceVersion())
		case "ERROR":
			st := kapi.StatusOf(ev.Object)
			if st.Code == 410 || st.Reason == kapi.ReasonExpired || st.Reason == kapi.ReasonGone {
				return rv, errRelist
			}
			return rv, fmt.Errorf("watch: %w", st)
		default:
			continue
		}
		if v := ev.Object.ResourceVersion(); v != "" {
			rv = v
		}
	}
	return rv, nil
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
