package registrar

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"go.yaml.in/yaml/v3"
)

// MemoryStore is a Store held in memory: for tests and for a gateway that needs no persistence.
type MemoryStore struct {
	entries *memResource[*WorkloadEntry]
	groups  *memResource[*WorkloadGroup]
	leases  *memResource[*Lease]
}

// NewMemoryStore returns an empty in-memory Store.
func NewMemoryStore() *MemoryStore {
	rv := new(atomic.Uint64)
	return &MemoryStore{
		entries: newMemResource[*WorkloadEntry](KindWorkloadEntry, rv, nil),
		groups:  newMemResource[*WorkloadGroup](KindWorkloadGroup, rv, nil),
		leases:  newMemResource[*Lease](KindLease, rv, nil),
	}
}

// WorkloadEntries implements Store.
func (s *MemoryStore) WorkloadEntries() Resource[*WorkloadEntry] { return s.entries }

// WorkloadGroups implements Store.
func (s *MemoryStore) WorkloadGroups() Resource[*WorkloadGroup] { return s.groups }

// Leases implements Store.
func (s *MemoryStore) Leases() Leases { return s.leases }

// FileStore is the Store of a standalone gateway: one directory holding one Kubernetes-shaped
// YAML file per object (what `kubectl get -o yaml` shows), at
// <dir>/<plural>/<namespace>/<name>.yaml, e.g. workloadentries/vm-ns/web-10.0.0.5.yaml.
//
// Every write goes to a temporary file that is synced and renamed over the old one, then the
// directory is synced: a crash leaves the old or the new object, never half of one. Objects are
// indexed in memory; reads never touch the disk. One process only: OpenFileStore takes an
// exclusive lock on the directory. Watches work within the process; resource versions go on from
// the highest one found at start, and a watch cannot resume across a restart (ErrGone).
type FileStore struct {
	MemoryStore
	dir    string
	unlock func() error
}

var plurals = map[string]string{
	KindWorkloadEntry: "workloadentries",
	KindWorkloadGroup: "workloadgroups",
	KindLease:         "leases",
}

// OpenFileStore opens (creating it if needed) the store in dir and loads every object in it.
func OpenFileStore(dir string) (*FileStore, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("registrar: file store: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("registrar: file store %s: %w", dir, err)
	}
	s := &FileStore{dir: dir, unlock: unlock}
	rv := new(atomic.Uint64)
	s.entries = newMemResource(KindWorkloadEntry, rv, filePersist[*WorkloadEntry](dir, KindWorkloadEntry, IstioAPIVersion))
	s.groups = newMemResource(KindWorkloadGroup, rv, filePersist[*WorkloadGroup](dir, KindWorkloadGroup, IstioAPIVersion))
	s.leases = newMemResource(KindLease, rv, filePersist[*Lease](dir, KindLease, LeaseAPIVersion))
	err = errors.Join(
		loadKind(dir, KindWorkloadEntry, s.entries, rv),
		loadKind(dir, KindWorkloadGroup, s.groups, rv),
		loadKind(dir, KindLease, s.leases, rv),
	)
	if err != nil {
		_ = unlock()
		return nil, err
	}
	return s, nil
}

// Close releases the directory lock. The store must not be used afterwards.
func (s *FileStore) Close() error { return s.unlock() }

// Dir returns the store's directory.
func (s *FileStore) Dir() string { return s.dir }

func filePersist[T Object[T]](dir, kind, apiVersion string) persistFunc[T] {
	return func(o T, del bool) error {
		m := o.Meta()
		nsDir := filepath.Join(dir, plurals[kind], m.Namespace)
		path := filepath.Join(nsDir, m.Name+".yaml")
		if del {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			return syncDir(nsDir)
		}
		data, err := encodeObject(o, apiVersion, kind)
		if err != nil {
			return err
		}
		if err := mkdirSynced(nsDir); err != nil {
			return err
		}
		return writeFileAtomic(nsDir, m.Name+".yaml", data)
	}
}

// encodeObject renders o as Kubernetes YAML: apiVersion and kind first, then the object.
func encodeObject(o any, apiVersion, kind string) ([]byte, error) {
	var n yaml.Node
	if err := n.Encode(o); err != nil {
		return nil, err
	}
	head := []*yaml.Node{
		{Kind: yaml.ScalarNode, Tag: "!!str", Value: "apiVersion"},
		{Kind: yaml.ScalarNode, Tag: "!!str", Value: apiVersion},
		{Kind: yaml.ScalarNode, Tag: "!!str", Value: "kind"},
		{Kind: yaml.ScalarNode, Tag: "!!str", Value: kind},
	}
	n.Content = append(head, n.Content...)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type typeMeta struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
}

// DecodeObject parses one Kubernetes-shaped YAML document into o, checking its kind.
func DecodeObject[T Object[T]](data []byte, kind string, o T) error {
	var tm typeMeta
	if err := yaml.Unmarshal(data, &tm); err != nil {
		return err
	}
	if tm.Kind != kind {
		return fmt.Errorf("kind %q, want %q", tm.Kind, kind)
	}
	return yaml.Unmarshal(data, o)
}

func loadKind[T Object[T]](dir, kind string, r *memResource[T], rv *atomic.Uint64) error {
	root := filepath.Join(dir, plurals[kind])
	nsDirs, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("registrar: file store: %w", err)
	}
	for _, ns := range nsDirs {
		if !ns.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(root, ns.Name()))
		if err != nil {
			return fmt.Errorf("registrar: file store: %w", err)
		}
		for _, f := range files {
			if err := loadFile(filepath.Join(root, ns.Name(), f.Name()), kind, r, rv); err != nil {
				return err
			}
		}
	}
	return nil
}

func loadFile[T Object[T]](path, kind string, r *memResource[T], rv *atomic.Uint64) error {
	base := filepath.Base(path)
	if strings.HasPrefix(base, ".") {
		// A temporary file left by a crash before its rename: the old object is still in place.
		return os.Remove(path)
	}
	if !strings.HasSuffix(base, ".yaml") {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("registrar: file store: %w", err)
	}
	o := newObject[T]()
	if err := DecodeObject(data, kind, o); err != nil {
		return fmt.Errorf("registrar: file store: %s: %w", path, err)
	}
	if v := rvOf(o); v > rv.Load() {
		rv.Store(v)
	}
	r.load(o)
	return nil
}

func newObject[T Object[T]]() T {
	var o T
	switch any(o).(type) {
	case *WorkloadEntry:
		return any(new(WorkloadEntry)).(T)
	case *WorkloadGroup:
		return any(new(WorkloadGroup)).(T)
	default:
		return any(new(Lease)).(T)
	}
}

func writeFileAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

func mkdirSynced(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	// The namespace directory and perhaps the kind directory are new: sync both parents.
	parent := filepath.Dir(dir)
	if err := syncDir(parent); err != nil {
		return err
	}
	return syncDir(filepath.Dir(parent))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
