package kube

import (
	"errors"
	"fmt"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/kube/kapi"
)

// apiError maps an API server error onto the registrar's sentinels (404 -> ErrNotFound,
// 409 AlreadyExists -> ErrAlreadyExists, other 409 -> ErrConflict, 410 -> ErrGone) and names
// the operation. The API server's own error stays in the chain too.
func apiError(op, resource, ns, name string, err error) error {
	if err == nil {
		return nil
	}
	var sentinel error
	reason, code := kapi.ReasonOf(err), kapi.CodeOf(err)
	switch {
	case reason == kapi.ReasonAlreadyExists: // a 409 too: checked before Conflict
		sentinel = registrar.ErrAlreadyExists
	case reason == kapi.ReasonNotFound || code == 404:
		sentinel = registrar.ErrNotFound
	case reason == kapi.ReasonConflict || code == 409:
		sentinel = registrar.ErrConflict
	case reason == kapi.ReasonGone || reason == kapi.ReasonExpired || code == 410:
		sentinel = registrar.ErrGone
	}
	where := resource + " " + ns + "/" + name
	if ns == "" {
		where = resource + " " + name
	}
	if sentinel == nil || errors.Is(err, sentinel) {
		return fmt.Errorf("registrar/kube: %s %s: %w", op, where, err)
	}
	return fmt.Errorf("registrar/kube: %s %s: %w (%w)", op, where, sentinel, err)
}
