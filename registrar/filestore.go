package registrar

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
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
// A write is durable, and its caller released, once it is in the store's journal
// (<dir>/.journal) and the journal is synced; writes that arrive together share one sync (group
// commit). The YAML files are written shortly after, in place and unsynced, by a writer
// goroutine: the journal keeps each write until a checkpoint has synced the files, and open
// replays it, so a crash at any point leaves the old or the new object, never half of one, and
// never loses a write reported done. A journal that cannot be replayed fully never stops the
// store from opening: what could not be read is logged (Recovery). Objects are
// indexed in memory; reads never touch the disk. One process only: OpenFileStore takes an
// exclusive lock on the directory. Watches work within the process; resource versions go on from
// the highest one found at start, and a watch cannot resume across a restart (ErrGone).
type FileStore struct {
	MemoryStore
	dir    string
	j      *journal
	rec    Recovery
	unlock func() error
}

// FileStoreOptions are the optional settings of OpenFileStoreWith.
type FileStoreOptions struct {
	// Logger receives what opening found wrong with the journal and the files the store could
	// not write. If nil, nothing is logged.
	Logger *zap.Logger
}

var plurals = map[string]string{
	KindWorkloadEntry: "workloadentries",
	KindWorkloadGroup: "workloadgroups",
	KindLease:         "leases",
}

// OpenFileStore opens (creating it if needed) the store in dir and loads every object in it.
func OpenFileStore(dir string) (*FileStore, error) { return OpenFileStoreWith(dir, FileStoreOptions{}) }

// OpenFileStoreWith is OpenFileStore with options. Its journal never makes it fail: only a
// directory that cannot be created or locked, or a YAML file that cannot be read, does.
func OpenFileStoreWith(dir string, opts FileStoreOptions) (*FileStore, error) {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("registrar: file store: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("registrar: file store %s: %w", dir, err)
	}
	j, unwritten, rec := openJournal(dir, log)
	s := &FileStore{dir: dir, j: j, rec: rec, unlock: unlock}
	rv := new(atomic.Uint64)
	s.entries = newMemResource(KindWorkloadEntry, rv, filePersist[*WorkloadEntry](j, KindWorkloadEntry))
	s.groups = newMemResource(KindWorkloadGroup, rv, filePersist[*WorkloadGroup](j, KindWorkloadGroup))
	s.leases = newMemResource(KindLease, rv, filePersist[*Lease](j, KindLease))
	// Objects whose file the journal could not write are served from their last record.
	skip := map[string]*journalEntry{}
	for _, e := range unwritten {
		skip[e.key()] = e
	}
	err = errors.Join(
		loadKind(dir, KindWorkloadEntry, s.entries, rv, skip),
		loadKind(dir, KindWorkloadGroup, s.groups, rv, skip),
		loadKind(dir, KindLease, s.leases, rv, skip),
	)
	for _, e := range unwritten {
		switch e.kind {
		case KindWorkloadEntry:
			overlay(s.entries, e, rv, log)
		case KindWorkloadGroup:
			overlay(s.groups, e, rv, log)
		default:
			overlay(s.leases, e, rv, log)
		}
	}
	if err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// overlay puts the object of a journal record into r (or takes it out, for a delete).
func overlay[T Object[T]](r *memResource[T], e *journalEntry, rv *atomic.Uint64, log *zap.Logger) {
	if e.del {
		r.mu.Lock()
		r.remove(nsName{e.namespace, e.name})
		r.mu.Unlock()
		return
	}
	v, err := e.decode()
	o, ok := v.(T)
	if err != nil || !ok {
		log.Error("file store: a journal record does not decode; the object is left as its file has it",
			zap.String("object", e.key()), zap.Error(err))
		return
	}
	if n := rvOf(o); n > rv.Load() {
		rv.Store(n)
	}
	r.load(o)
}

// Recovery says what opening the store found in its journal.
func (s *FileStore) Recovery() Recovery { return s.rec }

// Flush waits until the YAML file of every write reported done so far is written (not synced:
// the journal holds the writes until a checkpoint syncs them).
func (s *FileStore) Flush() { s.j.flush() }

// Close finishes the writes under way and releases the directory lock. Writes afterwards fail.
func (s *FileStore) Close() error { return errors.Join(s.j.close(), s.unlock()) }

// Dir returns the store's directory.
func (s *FileStore) Dir() string { return s.dir }

func filePersist[T Object[T]](j *journal, kind string) persistFunc[T] {
	return func(o T, del bool, done func(error)) error {
		m := o.Meta()
		e := &journalEntry{kind: kind, namespace: m.Namespace, name: m.Name, del: del, done: done}
		if !del {
			// The writer renders the YAML file from this JSON (renderYAML).
			var err error
			if e.data, err = json.Marshal(o); err != nil {
				return err
			}
		}
		return j.submit(e)
	}
}

// encodeObject renders o as Kubernetes YAML through yaml.v3: apiVersion and kind first, then the
// object. The file store wrote its files so before renderYAML; they still load.
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

func loadKind[T Object[T]](dir, kind string, r *memResource[T], rv *atomic.Uint64, skip map[string]*journalEntry) error {
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
			if skip[kind+"/"+ns.Name()+"/"+strings.TrimSuffix(f.Name(), ".yaml")] != nil {
				continue // the journal has a later state than the file
			}
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
