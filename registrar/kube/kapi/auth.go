package kapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// credentials give the bearer token of a request ("" for none); invalidate drops a cached
// one after the API server answered 401.
type credentials interface {
	token(ctx context.Context) (string, error)
	invalidate()
}

type staticToken string

func (t staticToken) token(context.Context) (string, error) { return string(t), nil }
func (staticToken) invalidate()                             {}

// tokenReread is how long a token file is trusted before it is read again (client-go: 1 min).
const tokenReread = time.Minute

// fileToken is a token file, re-read every minute and after a 401 (kubelet rotates projected
// service account tokens in place).
type fileToken struct {
	path string
	mu   sync.Mutex
	tok  string
	read time.Time
}

func (f *fileToken) token(context.Context) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tok != "" && time.Since(f.read) < tokenReread {
		return f.tok, nil
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return "", fmt.Errorf("kapi: token file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("kapi: token file %s is empty", f.path)
	}
	f.tok, f.read = t, time.Now()
	return t, nil
}

func (f *fileToken) invalidate() {
	f.mu.Lock()
	f.tok = ""
	f.mu.Unlock()
}

// execConfig is a kubeconfig user's exec credential plugin (clientcmd's execConfig).
type execConfig struct {
	APIVersion string   `yaml:"apiVersion"`
	Command    string   `yaml:"command"`
	Args       []string `yaml:"args"`
	Env        []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"env"`
	ProvideClusterInfo bool   `yaml:"provideClusterInfo"`
	InteractiveMode    string `yaml:"interactiveMode"`
	InstallHint        string `yaml:"installHint"`
}

// execCluster is spec.cluster of the ExecCredential the plugin is given (provideClusterInfo).
type execCluster struct {
	Server        string `json:"server"`
	TLSServerName string `json:"tls-server-name,omitempty"`
	CAData        string `json:"certificate-authority-data,omitempty"`
}

var execAPIVersions = map[string]bool{
	"client.authentication.k8s.io/v1":      true,
	"client.authentication.k8s.io/v1beta1": true,
}

// execCreds runs the plugin when it has no credential or the one it has expired or was
// refused, and caches what it printed: a token, a client certificate, or both.
type execCreds struct {
	cfg     execConfig
	cluster execCluster
	now     func() time.Time

	mu      sync.Mutex
	tok     string
	cert    *tls.Certificate
	expires time.Time // zero: until refused
	have    bool
}

func newExecCreds(c execConfig, dir string, cl execCluster) (*execCreds, error) {
	if !execAPIVersions[c.APIVersion] {
		return nil, fmt.Errorf("apiVersion %q: want client.authentication.k8s.io/v1 or v1beta1", c.APIVersion)
	}
	if c.Command == "" {
		return nil, errors.New("no command")
	}
	if c.InteractiveMode == "Always" {
		return nil, errors.New(`interactiveMode "Always": ewgate has no terminal to give the plugin; use IfAvailable or Never`)
	}
	if strings.Contains(c.Command, "/") {
		c.Command = resolve(dir, c.Command) // as kubectl: a path is relative to the kubeconfig
	}
	return &execCreds{cfg: c, cluster: cl, now: time.Now}, nil
}

func (e *execCreds) token(ctx context.Context) (string, error) {
	if err := e.ensure(ctx); err != nil {
		return "", err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.tok, nil
}

func (e *execCreds) invalidate() {
	e.mu.Lock()
	e.have = false
	e.mu.Unlock()
}

// clientCertificate is the TLS client certificate callback when the plugin gives one.
func (e *execCreds) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.ensure(ctx); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cert == nil {
		return &tls.Certificate{}, nil // no certificate: the token authenticates
	}
	return e.cert, nil
}

// ensure runs the plugin unless a credential is cached and unexpired.
func (e *execCreds) ensure(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.have && (e.expires.IsZero() || e.now().Before(e.expires)) {
		return nil
	}
	return e.runLocked(ctx)
}

// execCredential is the plugin's input and output (ExecCredential).
type execCredential struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Spec       struct {
		Interactive bool         `json:"interactive"`
		Cluster     *execCluster `json:"cluster,omitempty"`
	} `json:"spec"`
	Status *struct {
		Token                 string    `json:"token"`
		ClientCertificateData string    `json:"clientCertificateData"`
		ClientKeyData         string    `json:"clientKeyData"`
		ExpirationTimestamp   time.Time `json:"expirationTimestamp"`
	} `json:"status,omitempty"`
}

func (e *execCreds) runLocked(ctx context.Context) error {
	in := execCredential{APIVersion: e.cfg.APIVersion, Kind: "ExecCredential"}
	if e.cfg.ProvideClusterInfo {
		cl := e.cluster
		in.Spec.Cluster = &cl
	}
	info, err := json.Marshal(in)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, e.cfg.Command, e.cfg.Args...)
	cmd.Env = append(os.Environ(), "KUBERNETES_EXEC_INFO="+string(info))
	for _, kv := range e.cfg.Env {
		cmd.Env = append(cmd.Env, kv.Name+"="+kv.Value)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		hint := ""
		if errors.Is(err, exec.ErrNotFound) && e.cfg.InstallHint != "" {
			hint = "; " + e.cfg.InstallHint
		}
		return fmt.Errorf("kapi: exec plugin %s: %w: %s%s", e.cfg.Command, err, lastLine(stderr.String()), hint)
	}
	var out execCredential
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		return fmt.Errorf("kapi: exec plugin %s: its output is not an ExecCredential: %w", e.cfg.Command, err)
	}
	switch {
	case out.APIVersion != e.cfg.APIVersion || out.Kind != "ExecCredential":
		return fmt.Errorf("kapi: exec plugin %s answered %s %s, want %s ExecCredential", e.cfg.Command, out.APIVersion, out.Kind, e.cfg.APIVersion)
	case out.Status == nil || out.Status.Token == "" && out.Status.ClientCertificateData == "":
		return fmt.Errorf("kapi: exec plugin %s gave neither status.token nor status.clientCertificateData", e.cfg.Command)
	}
	st := out.Status
	e.tok, e.cert = st.Token, nil
	if st.ClientCertificateData != "" {
		pair, err := tls.X509KeyPair([]byte(st.ClientCertificateData), []byte(st.ClientKeyData))
		if err != nil {
			return fmt.Errorf("kapi: exec plugin %s: client certificate and key: %w", e.cfg.Command, err)
		}
		e.cert = &pair
	}
	e.expires, e.have = st.ExpirationTimestamp, true
	return nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}
