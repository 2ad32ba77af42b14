package registrar

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sync"
	"syscall"

	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"
)

// The file store's journal: group commit for the per-object YAML files.
//
// A write is durable, and its caller released, once its record is in the journal and the
// journal is synced. Writes that arrive while a sync is under way wait for the next one, and one
// fdatasync then covers all of them: the committer takes every queued record (at most
// journalBatch) as soon as it is free, so a lone write waits for no timer and a crowd shares one
// sync. The YAML files (what operators read) are written afterwards, in place and unsynced, by a
// writer goroutine (fileWriter): creating a file costs far more than the sync on ext4, and it is
// off the caller's path. The journal is preallocated, so a sync writes data and flushes the
// device without a filesystem journal commit. When it is full, the files written since the last
// checkpoint are synced (syncfs on Linux) and the journal starts over under a new epoch. Open
// replays the current epoch's records onto the files (journal_open.go), so a write reported done
// is on disk after a crash at any point.
//
// Layout: a 16-byte header (magic, epoch), then records: length (4 bytes), CRC-32C of the rest
// (4), epoch (8), then kind, namespace and name each ended by a NUL, one byte 'D' (delete), 'J'
// (write, the object's JSON: a tenth of the YAML's cost on the caller's path; the writer renders
// the YAML) or 'W' (write, the object's YAML, as the first journals had it), and the object. Replay stops at the first record whose length, CRC or
// epoch does not fit: a torn tail or the previous epoch's leftovers.
const (
	journalName   = ".journal"
	journalMagic  = "ewgjrnl1"
	journalHeader = 16
	journalRecord = 16 // record header: length, crc, epoch
	journalBatch  = 256
)

// journalSize is the journal's largest size: about 5,000 WorkloadEntries between checkpoints.
// The journal takes at most a sixteenth of the space free on the store's volume (journalSpan),
// never less than journalMin.
var journalSize int64 = 4 << 20

const journalMin = 16 << 10

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// journalEntry is one queued write and what to call once it is durable (or has failed).
type journalEntry struct {
	kind, namespace, name string
	del                   bool
	yaml                  bool   // data is the YAML of the file, not JSON
	data                  []byte // what the record holds
	done                  func(error)
}

// render appends the YAML file of a write to dst: the object's, as `kubectl get -o yaml` shows
// it, converted straight from the record's JSON.
func (e *journalEntry) render(dst []byte) ([]byte, error) {
	if e.yaml {
		return append(dst, e.data...), nil
	}
	return renderYAML(dst, apiVersions[e.kind], e.kind, e.data)
}

// decode returns the object of a write record.
func (e *journalEntry) decode() (any, error) {
	var o any
	switch e.kind {
	case KindWorkloadEntry:
		o = new(WorkloadEntry)
	case KindWorkloadGroup:
		o = new(WorkloadGroup)
	default:
		o = new(Lease)
	}
	var err error
	if e.yaml {
		err = yaml.Unmarshal(e.data, o)
	} else {
		err = json.Unmarshal(e.data, o)
	}
	if err != nil {
		return nil, fmt.Errorf("journal record of %s: %w", e.key(), err)
	}
	return o, nil
}

var apiVersions = map[string]string{
	KindWorkloadEntry: IstioAPIVersion,
	KindWorkloadGroup: IstioAPIVersion,
	KindLease:         LeaseAPIVersion,
}

func (e *journalEntry) key() string { return e.kind + "/" + e.namespace + "/" + e.name }

type journal struct {
	dir  string
	path string
	log  *zap.Logger
	f    *os.File // nil: the journal could not be opened; the next write tries again
	// Owned by the committer (and by open before it starts).
	epoch uint64
	pos   int64
	limit int64 // records end before it: the journal's size, set at each checkpoint
	// fresh: the current epoch's header is not on disk (the disk was full at open, or the file
	// could not be opened): the first write starts an epoch, and fails while that fails.
	fresh bool

	mu      sync.Mutex
	queue   []*journalEntry
	closed  bool
	wake    chan struct{} // capacity 1
	stopped chan struct{} // closed when the committer has returned

	w fileWriter
}

// submit queues e. e.done is called once, by the committer in submission order, when e is
// durable (its file is written later) or has failed.
func (j *journal) submit(e *journalEntry) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return errors.New("file store is closed")
	}
	j.queue = append(j.queue, e)
	select {
	case j.wake <- struct{}{}:
	default:
	}
	return nil
}

// close commits what is queued, writes every file, stops the committer and closes the file.
func (j *journal) close() error {
	j.mu.Lock()
	if !j.closed {
		j.closed = true
		close(j.wake)
	}
	j.mu.Unlock()
	<-j.stopped
	if j.f == nil {
		return nil
	}
	return j.f.Close()
}

// flush waits until the files of every write reported done so far are written (not synced).
func (j *journal) flush() { j.w.drain() }

func (j *journal) run() {
	defer close(j.stopped)
	defer j.w.stop()
	var buf []byte
	for {
		j.mu.Lock()
		n := min(len(j.queue), journalBatch)
		batch := j.queue[:n:n]
		j.queue = j.queue[n:]
		closed := j.closed
		j.mu.Unlock()
		if n == 0 {
			if closed {
				return
			}
			<-j.wake
			continue
		}
		buf = j.commit(buf[:0], batch)
	}
}

// commit makes batch durable in the journal, hands it to the file writer and calls each done.
func (j *journal) commit(buf []byte, batch []*journalEntry) []byte {
	for len(batch) > 0 {
		var n int
		var err error
		buf, n, err = j.fill(buf[:0], batch)
		if err == nil {
			err = j.write(buf)
		} else {
			n = len(batch) // the journal cannot take any: none of them is written
		}
		if err == nil {
			// Handed over first: a caller that returns and flushes finds its file queued.
			j.w.add(batch[:n:n])
		}
		for _, e := range batch[:n] {
			e.done(err)
		}
		batch = batch[n:]
	}
	return buf
}

// fill encodes as many of batch as fit in the journal, checkpointing first if the first does not.
func (j *journal) fill(buf []byte, batch []*journalEntry) ([]byte, int, error) {
	if j.fresh {
		if err := j.checkpoint(); err != nil {
			return buf, 0, fmt.Errorf("journal %s cannot be started: %w (free space on the store's volume; writes fail until then)", j.path, err)
		}
		j.fresh = false
	}
	n := 0
	for _, e := range batch {
		next := j.encode(buf, e)
		if j.pos+int64(len(next)) > j.limit {
			if n > 0 {
				break
			}
			if j.pos > journalHeader {
				if err := j.checkpoint(); err != nil {
					return buf, 0, fmt.Errorf("journal %s is full and the checkpoint that empties it failed: %w "+
						"(free space on the store's volume; no write reported done is lost)", j.path, err)
				}
				next = j.encode(buf[:0], e) // the epoch changed
			}
			if j.pos+int64(len(next)) > j.limit {
				return buf, 0, fmt.Errorf("object of %d bytes does not fit in the journal %s (%d bytes: free space on the store's volume)",
					len(e.data), j.path, j.limit)
			}
		}
		buf = next
		n++
	}
	return buf, n, nil
}

func (j *journal) write(buf []byte) error {
	_, err := j.f.WriteAt(buf, j.pos)
	if err == nil {
		err = fdatasync(j.f)
	}
	if err != nil {
		// Not reported done: make sure no replay finds these records (best effort: the next
		// successful write overwrites them anyway).
		_, _ = j.f.WriteAt(make([]byte, len(buf)), j.pos)
		if errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("journal %s: %w (free space on the store's volume)", j.path, err)
		}
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	j.pos += int64(len(buf))
	return nil
}

func (j *journal) encode(buf []byte, e *journalEntry) []byte {
	start := len(buf)
	buf = append(buf, make([]byte, journalRecord)...)
	buf = append(buf, e.kind...)
	buf = append(buf, 0)
	buf = append(buf, e.namespace...)
	buf = append(buf, 0)
	buf = append(buf, e.name...)
	buf = append(buf, 0)
	switch {
	case e.del:
		buf = append(buf, 'D')
	case e.yaml:
		buf = append(buf, 'W')
	default:
		buf = append(buf, 'J')
	}
	buf = append(buf, e.data...)
	rec := buf[start:]
	binary.LittleEndian.PutUint32(rec[0:4], uint32(len(rec)))
	binary.LittleEndian.PutUint64(rec[8:16], j.epoch)
	binary.LittleEndian.PutUint32(rec[4:8], crc32.Checksum(rec[8:], crcTable))
	return buf
}

// decodeRecords returns the records of epoch at the start of b and the length they take.
func decodeRecords(b []byte, epoch uint64) ([]*journalEntry, int) {
	var out []*journalEntry
	used := 0
	for len(b) >= journalRecord {
		n := int(binary.LittleEndian.Uint32(b[0:4]))
		if n < journalRecord || n > len(b) || binary.LittleEndian.Uint64(b[8:16]) != epoch ||
			crc32.Checksum(b[8:n], crcTable) != binary.LittleEndian.Uint32(b[4:8]) {
			break
		}
		parts := bytes.SplitN(b[journalRecord:n], []byte{0}, 4)
		if len(parts) != 4 || len(parts[3]) == 0 || plurals[string(parts[0])] == "" || !bytes.ContainsAny(parts[3][:1], "DJW") {
			break
		}
		out = append(out, &journalEntry{
			kind: string(parts[0]), namespace: string(parts[1]), name: string(parts[2]),
			del: parts[3][0] == 'D', yaml: parts[3][0] == 'W', data: parts[3][1:],
		})
		b = b[n:]
		used += n
	}
	return out, used
}
