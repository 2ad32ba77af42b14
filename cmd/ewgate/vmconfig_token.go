package main

// Standalone VM tokens: with no Kubernetes to issue them, ewgate vm-config signs a token itself,
// shaped like a Kubernetes service-account token (iss, sub system:serviceaccount:<ns>:<sa>,
// aud istio-ca, the kubernetes.io claims, exp), with an ECDSA P-256 key kept in --token-key-dir
// (vm-token-key.pem, 0600, created on first use). Next to it, vm-token-jwks.json holds the
// public key; ewgate's authn trusts the tokens through an issuer entry naming that file:
//
//	authn:
//	  issuers:
//	    - issuer: https://ewgate.local/vm-tokens     # --issuer
//	      cluster: cluster1                          # the builtin upstream's cluster
//	      jwks_file: /var/lib/ewgate/vm-tokens/vm-token-jwks.json

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/config/field"
	"github.com/ewgate/ewgate/gateway/meshca"
	"github.com/ewgate/ewgate/registrar"
)

const (
	defaultVMIssuer = "https://ewgate.local/vm-tokens"
	vmTokenKeyFile  = "vm-token-key.pem"
	vmTokenJWKSFile = "vm-token-jwks.json"
)

// vmTokenKey loads the signing key from dir, creating it on first use, and writes its public
// key to jwksPath.
func vmTokenKey(dir, jwksPath string) (*ecdsa.PrivateKey, string, error) {
	path := filepath.Join(dir, vmTokenKeyFile)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		key, gerr := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if gerr != nil {
			return nil, "", gerr
		}
		der, merr := x509.MarshalPKCS8PrivateKey(key)
		if merr != nil {
			return nil, "", merr
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, "", err
		}
		b = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return nil, "", err
		}
	case err != nil:
		return nil, "", err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, "", fmt.Errorf("%s: no PEM key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, "", fmt.Errorf("%s: not an ECDSA key", path)
	}
	kid, err := keyID(&key.PublicKey)
	if err != nil {
		return nil, "", err
	}
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: kid, Algorithm: string(jose.ES256), Use: "sig"}}})
	if err != nil {
		return nil, "", err
	}
	// Rewritten every time, so a deleted or stale JWKS heals itself.
	if err := os.WriteFile(jwksPath, append(jwks, '\n'), 0o644); err != nil {
		return nil, "", err
	}
	return key, kid, nil
}

// keyID is the RFC 7638 thumbprint of the public key, hex.
func keyID(pub *ecdsa.PublicKey) (string, error) {
	t, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(t[:16]), nil
}

// signVMToken signs a service-account-shaped token for ns/sa.
func signVMToken(key *ecdsa.PrivateKey, kid, issuer, ns, sa string, now time.Time, ttl time.Duration) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		return "", err
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return "", err
	}
	claims := jwt.Claims{
		Issuer:    issuer,
		Subject:   "system:serviceaccount:" + ns + ":" + sa,
		Audience:  jwt.Audience{"istio-ca"},
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now),
		Expiry:    jwt.NewNumericDate(now.Add(ttl)),
		ID:        hex.EncodeToString(id),
	}
	k8s := map[string]any{"kubernetes.io": map[string]any{
		"namespace":      ns,
		"serviceaccount": map[string]string{"name": sa, "uid": ""},
	}}
	return jwt.Signed(signer).Claims(claims).Claims(k8s).Serialize()
}

// standaloneBundle reads the group, cluster, CA and trust domain from ewgate's own config and
// signs the token with ewgate's VM-token key.
//
// The key (and its JWKS) comes first and the mesh root from the built-in CA, created if need be,
// so that vm-config works on the final config before ewgate ever ran: that config names the
// JWKS in its authn issuer, which config.Load and `ewgate serve` both require to exist, and
// without the issuer the control endpoint has nothing to authenticate with and the config is
// refused too. Otherwise a standalone ewgate whose VMs use these tokens has no first step.
func standaloneBundle(f *vmFlags, now time.Time) (*bundle, error) {
	// The files the config names may not exist yet (the JWKS is written here): everything
	// else is checked now, and the whole config once the key exists.
	pre, err := config.LoadOffline(f.config)
	if err != nil {
		return nil, err
	}
	is, err := tokenIssuer(f, pre)
	if err != nil {
		return nil, err
	}
	keyDir := filepath.Dir(is.JWKSFile)
	if f.keyDir != "" && filepath.Clean(f.keyDir) != keyDir {
		return nil, fmt.Errorf("--token-key-dir %s: %s's authn issuer %s reads its keys from %s: leave --token-key-dir out, or point jwks_file into it",
			f.keyDir, f.config, f.issuer, is.JWKSFile)
	}
	key, kid, err := vmTokenKey(keyDir, is.JWKSFile)
	if err != nil {
		return nil, fmt.Errorf("VM token key: %w", err)
	}
	cfg, note, err := loadWithKey(f, pre)
	if err != nil {
		return nil, err
	}
	ns, name := f.namespaceName()
	b := &bundle{TrustDomain: cfg.ControlPlane.CA.TrustDomain, Network: cfg.XDS.Node.Network, note: note}
	accepted := acceptedClusters(cfg, is)
	if f.clusterID != "" && !slices.Contains(accepted, f.clusterID) {
		return nil, fmt.Errorf("--cluster-id %s: ewgate refuses it for tokens of %s (%s accepts cluster %s): leave --cluster-id out or pass one of those",
			f.clusterID, f.issuer, f.config, strings.Join(accepted, ", "))
	}
	if cfg.Control != nil {
		for _, u := range cfg.Control.Upstreams {
			if u.Builtin {
				b.ClusterID = u.Cluster
			}
		}
	}
	if is.Cluster != "" {
		b.ClusterID = is.Cluster // what the verified identity carries
	}
	if b.ClusterID == "" && f.clusterID == "" {
		return nil, fmt.Errorf("%s: no control.upstreams entry with builtin: true; pass --cluster-id", f.config)
	}
	cluster := b.ClusterID
	if f.clusterID != "" {
		cluster = f.clusterID
	}
	if b.Group, err = groupOf(cfg, f.config, ns, name, cluster); err != nil {
		return nil, err
	}
	if b.Token, err = signVMToken(key, kid, f.issuer, ns, serviceAccountOf(&b.Group), now, f.duration); err != nil {
		return nil, err
	}
	meshRoot, err := standaloneMeshRoot(f, cfg)
	if err != nil {
		return nil, fmt.Errorf("mesh root: %w", err)
	}
	serving, err := os.ReadFile(f.servingCA)
	if err != nil {
		return nil, err
	}
	b.Root, err = rootBundle(serving, meshRoot)
	return b, err
}

// standaloneMeshRoot is --mesh-root, or the root of the built-in CA as `ewgate serve` opens it
// (meshca.Open: from cert_file, or from data_dir, generated there when it holds no CA yet, exactly
// as serve's first start would).
func standaloneMeshRoot(f *vmFlags, cfg *config.File) ([]byte, error) {
	if f.meshRoot != "" {
		return os.ReadFile(f.meshRoot)
	}
	c := cfg.ControlPlane.CA
	if c.DataDir == "" && c.CertFile == "" {
		return nil, fmt.Errorf("%s: no control_plane.ca to take it from; pass --mesh-root", f.config)
	}
	a, err := meshca.Open(meshca.Options{DataDir: c.DataDir, CertFile: c.CertFile, KeyFile: c.KeyFile, TrustDomain: c.TrustDomain})
	if err != nil {
		return nil, err
	}
	return []byte(a.RootPEM()), nil
}

// tokenIssuer is the config's authn issuer entry for the tokens vm-config signs (--issuer):
// without one naming a jwks_file, ewgate would refuse every such token.
func tokenIssuer(f *vmFlags, cfg *config.File) (*authn.IssuerConfig, error) {
	if cfg.Authn != nil {
		for i := range cfg.Authn.Issuers {
			if is := &cfg.Authn.Issuers[i]; is.Issuer == f.issuer {
				if is.JWKSFile == "" {
					return nil, fmt.Errorf("%s: authn.issuers[%d] (%s) has no jwks_file: name the file vm-config writes its public key to (for example /var/lib/ewgate/vm-tokens/%s)", f.config, i, f.issuer, vmTokenJWKSFile)
				}
				return is, nil
			}
		}
	}
	return nil, fmt.Errorf("%s: no authn.issuers entry with issuer %s, so ewgate would refuse the token: add one with jwks_file: /var/lib/ewgate/vm-tokens/%s (docs/vm-identity.md)", f.config, f.issuer, vmTokenJWKSFile)
}

// acceptedClusters are the cluster IDs ewgate accepts from a VM holding a token of is: the
// issuer's cluster (the verified identity's; another is refused as cluster_mismatch), else the
// clusters of control.upstreams.
func acceptedClusters(cfg *config.File, is *authn.IssuerConfig) []string {
	if is.Cluster != "" {
		return []string{is.Cluster}
	}
	var out []string
	if cfg.Control != nil {
		for _, u := range cfg.Control.Upstreams {
			out = append(out, u.Cluster)
		}
	}
	return out
}

// loadWithKey loads the whole config once the key set of this run's issuer exists. The key
// sets of other standalone issuers (each written by vm-config for its own --issuer) may not
// exist yet: then the config as checked offline (pre) stands in, and note names them.
func loadWithKey(f *vmFlags, pre *config.File) (cfg *config.File, note string, err error) {
	cfg, err = config.Load(f.config)
	var fe field.Errors
	if err == nil || !errors.As(err, &fe) {
		return cfg, "", err
	}
	others := map[string]int{} // the jwks_file field of each other issuer: its index
	for k, is := range pre.Authn.Issuers {
		if is.Issuer != f.issuer {
			others[fmt.Sprintf("authn.issuers[%d].jwks_file", k)] = k
		}
	}
	var missing []string
	for _, e := range fe {
		i, ok := others[e.Path]
		if !ok || !e.IsCannotRead() {
			return nil, "", err
		}
		if _, serr := os.Stat(pre.Authn.Issuers[i].JWKSFile); !errors.Is(serr, os.ErrNotExist) {
			return nil, "", err
		}
		missing = append(missing, pre.Authn.Issuers[i].Issuer)
	}
	return pre, fmt.Sprintf("the key sets of %s do not exist yet: run vm-config with each as --issuer before ewgate serve, which needs them",
		strings.Join(missing, ", ")), nil
}

// groupOf is the workload_groups entry ns/name the VM of cluster joins: with a store per
// cluster, the same name may be a group in several clusters, each with its own template.
func groupOf(cfg *config.File, file, ns, name, cluster string) (registrar.WorkloadGroup, error) {
	var others []string
	for _, g := range cfg.WorkloadGroups {
		if g.Name != name || g.Namespace != ns {
			continue
		}
		if g.Cluster == "" || g.Cluster == cluster {
			return g.WorkloadGroup, nil
		}
		others = append(others, g.Cluster)
	}
	if len(others) > 0 {
		return registrar.WorkloadGroup{}, fmt.Errorf("%s: workload_groups %s/%s is a group of cluster %s, not of the VM's cluster %s (that of the --issuer's tokens): add it for %s, or pass the --issuer of a cluster that has it",
			file, ns, name, strings.Join(others, ", "), cluster, cluster)
	}
	return registrar.WorkloadGroup{}, fmt.Errorf("%s: no workload_groups entry %s/%s", file, ns, name)
}
