// Package kapi is a small client of the Kubernetes API over net/http and encoding/json: what
// the registrar's kube store and `ewgate vm-config` need (get, list, create, update, delete and
// watch of JSON objects, the status and token subresources) and the ways an operator points a
// client at a cluster: in-cluster config, a kubeconfig's current context with a token, a token
// file, client certificates, a CA, or an exec credential plugin
// (client.authentication.k8s.io v1 and v1beta1).
//
// It replaces client-go in the gateway's binary. client-go's apimachinery links code (go-cmp,
// json-iterator's reflect2) that calls methods by name through reflection; with it, the Go
// linker keeps every exported method of every type, and an idle gateway carried about 10 MiB
// more of its own executable resident (docs/operations.md, "Memory at idle").
//
// What it does not do: kubeconfig merging over $KUBECONFIG lists, auth-provider plugins
// (removed from client-go too), basic auth, impersonation, proxies, and certificate checks
// turned off (insecure-skip-tls-verify): each is refused with an error naming the field.
package kapi

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Config says how to reach and authenticate to an API server. Build it with InCluster or
// Kubeconfig.
type Config struct {
	Host string      // https://host:port
	TLS  *tls.Config // the server's CA and name, and the client certificate if any
	// QPS and Burst bound the client's request rate (a token bucket); zero QPS: no limit.
	QPS   float64
	Burst int

	creds       credentials // bearer token source; nil: none
	execCluster execCluster // what an exec plugin with provideClusterInfo is told
}

// In-cluster paths and variables, as every Kubernetes Pod has them.
const (
	saDir       = "/var/run/secrets/kubernetes.io/serviceaccount"
	envHost     = "KUBERNETES_SERVICE_HOST"
	envPort     = "KUBERNETES_SERVICE_PORT"
	inClusterCA = "ca.crt"
	inClusterTk = "token"
)

// InCluster is the configuration of the Pod's own cluster: the API server from
// KUBERNETES_SERVICE_HOST and _PORT, its CA and the service account token (re-read every
// minute: projected tokens rotate) from the service account directory.
func InCluster() (*Config, error) { return inClusterAt(saDir, os.Getenv) }

func inClusterAt(dir string, getenv func(string) string) (*Config, error) {
	host, port := getenv(envHost), getenv(envPort)
	if host == "" || port == "" {
		return nil, fmt.Errorf("kapi: in-cluster config: %s and %s are not set (not running in a Pod; pass a kubeconfig)", envHost, envPort)
	}
	tokenFile := filepath.Join(dir, inClusterTk)
	if _, err := os.Stat(tokenFile); err != nil {
		return nil, fmt.Errorf("kapi: in-cluster config: service account token: %w (is automountServiceAccountToken off?)", err)
	}
	pool, err := loadCA(filepath.Join(dir, inClusterCA), "")
	if err != nil {
		return nil, fmt.Errorf("kapi: in-cluster config: %w", err)
	}
	return &Config{
		Host:  "https://" + net.JoinHostPort(host, port),
		TLS:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		creds: &fileToken{path: tokenFile},
	}, nil
}

// kcUser is a kubeconfig user's credentials.
type kcUser struct {
	Token          string         `yaml:"token"`
	TokenFile      string         `yaml:"tokenFile"`
	ClientCert     string         `yaml:"client-certificate"`
	ClientCertData string         `yaml:"client-certificate-data"`
	ClientKey      string         `yaml:"client-key"`
	ClientKeyData  string         `yaml:"client-key-data"`
	Exec           *execConfig    `yaml:"exec"`
	Username       string         `yaml:"username"`
	AuthProvider   map[string]any `yaml:"auth-provider"`
	As             string         `yaml:"as"`
}

// kubeconfig is the part of a kubeconfig file read here (clientcmd's v1 Config).
type kubeconfig struct {
	CurrentContext string `yaml:"current-context"`
	Clusters       []struct {
		Name    string `yaml:"name"`
		Cluster struct {
			Server        string `yaml:"server"`
			CA            string `yaml:"certificate-authority"`
			CAData        string `yaml:"certificate-authority-data"`
			TLSServerName string `yaml:"tls-server-name"`
			Insecure      bool   `yaml:"insecure-skip-tls-verify"`
			ProxyURL      string `yaml:"proxy-url"`
		} `yaml:"cluster"`
	} `yaml:"clusters"`
	Users []struct {
		Name string `yaml:"name"`
		User kcUser `yaml:"user"`
	} `yaml:"users"`
	Contexts []struct {
		Name    string `yaml:"name"`
		Context struct {
			Cluster string `yaml:"cluster"`
			User    string `yaml:"user"`
		} `yaml:"context"`
	} `yaml:"contexts"`
}

// Kubeconfig is the configuration of the current context of the kubeconfig file at path.
// Relative file names in it (certificate-authority, client-certificate, client-key, tokenFile,
// an exec command with a slash) are relative to the file's directory, as kubectl reads them.
func Kubeconfig(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("kapi: kubeconfig: %w", err)
	}
	var kc kubeconfig
	if err := yaml.Unmarshal(raw, &kc); err != nil {
		return nil, fmt.Errorf("kapi: kubeconfig %s: %w", path, err)
	}
	cfg, err := kc.config(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("kapi: kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

func (kc *kubeconfig) config(dir string) (*Config, error) {
	if kc.CurrentContext == "" {
		return nil, errors.New("no current-context")
	}
	ci := -1
	for i, c := range kc.Contexts {
		if c.Name == kc.CurrentContext {
			ci = i
		}
	}
	if ci < 0 {
		return nil, fmt.Errorf("current-context %q is not in contexts", kc.CurrentContext)
	}
	ctxt := kc.Contexts[ci].Context
	cfg := &Config{TLS: &tls.Config{MinVersion: tls.VersionTLS12}}
	found := false
	for _, c := range kc.Clusters {
		if c.Name != ctxt.Cluster {
			continue
		}
		found = true
		cl := c.Cluster
		switch {
		case cl.Server == "":
			return nil, fmt.Errorf("cluster %q has no server", c.Name)
		case cl.Insecure:
			return nil, fmt.Errorf("cluster %q: insecure-skip-tls-verify is not supported: give certificate-authority(-data)", c.Name)
		case cl.ProxyURL != "":
			return nil, fmt.Errorf("cluster %q: proxy-url is not supported", c.Name)
		}
		cfg.Host = strings.TrimSuffix(cl.Server, "/")
		cfg.TLS.ServerName = cl.TLSServerName
		if cl.CA != "" || cl.CAData != "" {
			pool, err := loadCA(resolve(dir, cl.CA), cl.CAData)
			if err != nil {
				return nil, fmt.Errorf("cluster %q: %w", c.Name, err)
			}
			cfg.TLS.RootCAs = pool
		}
		cfg.execCluster = execCluster{Server: cfg.Host, CAData: caDataOf(resolve(dir, cl.CA), cl.CAData), TLSServerName: cl.TLSServerName}
	}
	if !found {
		return nil, fmt.Errorf("context %q names cluster %q, which is not in clusters", kc.CurrentContext, ctxt.Cluster)
	}
	if !strings.HasPrefix(cfg.Host, "https://") {
		return nil, fmt.Errorf("server %q: only https:// API servers are supported", cfg.Host)
	}
	if ctxt.User == "" {
		return cfg, nil
	}
	for _, u := range kc.Users {
		if u.Name == ctxt.User {
			return cfg, cfg.userAuth(dir, u.Name, &u.User)
		}
	}
	return nil, fmt.Errorf("context %q names user %q, which is not in users", kc.CurrentContext, ctxt.User)
}

// userAuth sets the credentials of one kubeconfig user.
func (cfg *Config) userAuth(dir, name string, u *kcUser) error {
	switch {
	case u.Username != "":
		return fmt.Errorf("user %q: basic auth (username/password) is not supported", name)
	case u.AuthProvider != nil:
		return fmt.Errorf("user %q: auth-provider is not supported: use an exec credential plugin", name)
	case u.As != "":
		return fmt.Errorf("user %q: impersonation (as) is not supported", name)
	}
	if u.ClientCert != "" || u.ClientCertData != "" {
		certPEM, err := fileOrData(resolve(dir, u.ClientCert), u.ClientCertData)
		if err != nil {
			return fmt.Errorf("user %q: client certificate: %w", name, err)
		}
		keyPEM, err := fileOrData(resolve(dir, u.ClientKey), u.ClientKeyData)
		if err != nil {
			return fmt.Errorf("user %q: client key: %w", name, err)
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return fmt.Errorf("user %q: client certificate and key: %w", name, err)
		}
		cfg.TLS.Certificates = []tls.Certificate{pair}
	}
	switch {
	case u.Exec != nil:
		e, err := newExecCreds(*u.Exec, dir, cfg.execCluster)
		if err != nil {
			return fmt.Errorf("user %q: exec: %w", name, err)
		}
		cfg.creds = e
		if len(cfg.TLS.Certificates) == 0 {
			cfg.TLS.GetClientCertificate = e.clientCertificate
		}
	case u.Token != "":
		cfg.creds = staticToken(u.Token)
	case u.TokenFile != "":
		cfg.creds = &fileToken{path: resolve(dir, u.TokenFile)}
	}
	return nil
}

func resolve(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// fileOrData returns base64 data when set, else the file's contents.
func fileOrData(file, data string) ([]byte, error) {
	if data != "" {
		b, err := base64.StdEncoding.DecodeString(data)
		if err != nil {
			return nil, fmt.Errorf("*-data is not base64: %w", err)
		}
		return b, nil
	}
	if file == "" {
		return nil, errors.New("neither a file nor *-data given")
	}
	return os.ReadFile(file)
}

func caDataOf(file, data string) string {
	if data != "" || file == "" {
		return data
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return ""
	}
	return base64.StdEncoding.EncodeToString(b)
}

func loadCA(file, data string) (*x509.CertPool, error) {
	pemBytes, err := fileOrData(file, data)
	if err != nil {
		return nil, fmt.Errorf("certificate authority: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("certificate authority %s: no PEM certificate in it", file)
	}
	return pool, nil
}
