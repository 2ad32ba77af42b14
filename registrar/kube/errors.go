package kube

import (
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/ewgate/ewgate/registrar"
)

// apiError maps an API server error onto the registrar's sentinels (404 -> ErrNotFound,
// 409 AlreadyExists -> ErrAlreadyExists, other 409 -> ErrConflict, 410 -> ErrGone) and names
// the operation. The API server's own error stays in the chain too.
func apiError(op, resource, ns, name string, err error) error {
	if err == nil {
		return nil
	}
	var sentinel error
	switch {
	case apierrors.IsAlreadyExists(err): // a 409 too: checked before IsConflict
		sentinel = registrar.ErrAlreadyExists
	case apierrors.IsNotFound(err):
		sentinel = registrar.ErrNotFound
	case apierrors.IsConflict(err):
		sentinel = registrar.ErrConflict
	case apierrors.IsGone(err), apierrors.IsResourceExpired(err):
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
