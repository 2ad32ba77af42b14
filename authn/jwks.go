package authn

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// minRSABits: smaller RSA keys in a JWKS are skipped.
const minRSABits = 2048

// keySet is an immutable set of public signing keys of one issuer.
type keySet struct {
	keys    []jose.JSONWebKey
	fetched time.Time
}

// lookup returns the candidate keys for a kid. With no kid the set must
// hold exactly one key (RFC 7515 makes kid optional; with several keys we
// refuse instead of trying each, so one token costs one verification).
func (s *keySet) lookup(kid string) ([]jose.JSONWebKey, error) {
	if kid == "" {
		if len(s.keys) == 1 {
			return s.keys, nil
		}
		return nil, ErrMissingKID
	}
	var out []jose.JSONWebKey
	for _, k := range s.keys {
		if k.KeyID == kid {
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return nil, ErrUnknownKID
	}
	return out, nil
}

func (s *keySet) kids() string {
	ids := make([]string, len(s.keys))
	for i, k := range s.keys {
		ids[i] = k.KeyID
	}
	sort.Strings(ids)
	return strings.Join(ids, ",")
}

// parseJWKS parses a JSON Web Key Set and keeps the usable public signing
// keys: RSA of at least 2048 bits, ECDSA P-256/384/521, Ed25519. Symmetric
// keys, encryption keys and keys that do not parse are skipped (counted in
// skipped), so one odd key does not take the whole issuer down. Private
// parts, if a careless publisher included them, are dropped.
func parseJWKS(data []byte) (*keySet, int, error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, 0, fmt.Errorf("not a JSON Web Key Set: %v", err)
	}
	set := &keySet{}
	skipped := 0
	for _, r := range raw.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(r); err != nil || !k.Valid() || (k.Use != "" && k.Use != "sig") {
			skipped++
			continue
		}
		pub, ok := publicKey(k.Key)
		if !ok {
			skipped++
			continue
		}
		k.Key = pub
		k.Certificates = nil
		set.keys = append(set.keys, k)
	}
	if len(set.keys) == 0 {
		return nil, skipped, errors.New("JSON Web Key Set has no usable signing key (RSA >= 2048 bits, EC P-256/384/521, Ed25519)")
	}
	return set, skipped, nil
}

func publicKey(k any) (any, bool) {
	switch k := k.(type) {
	case *rsa.PublicKey:
		return k, k.N.BitLen() >= minRSABits
	case *rsa.PrivateKey:
		return &k.PublicKey, k.N.BitLen() >= minRSABits
	case *ecdsa.PublicKey:
		return k, true
	case *ecdsa.PrivateKey:
		return &k.PublicKey, true
	case ed25519.PublicKey:
		return k, true
	case ed25519.PrivateKey:
		return k.Public(), true
	}
	return nil, false
}
