package registrar

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// The file store's journal: group commit for the per-object YAML files.
//
// A write is durable once its record is in the journal and the journal is synced; the YAML file
// is then written (in place, not synced) by another goroutine before the caller is released,
// while the committer syncs the next batch. Writes that arrive while a sync is under
// way wait for the next one, and one fdatasync then covers all of them: the committer takes every
// queued record (at most journalBatch) as soon as it is free, so a lone write waits for no timer
// and a crowd shares one sync. The journal is preallocated, so a sync writes data and flushes the
// device without a filesystem journal commit. When it is full, the YAML files written since the
// last checkpoint are synced (syncfs on Linux) and the journal starts over under a new epoch.
// Open replays the current epoch's records onto the YAML files, so a write reported done is on
// disk after a crash at any point.
//
// Layout: a 16-byte header (magic, epoch), then records: length (4 bytes), CRC-32C of the rest
// (4), epoch (8), then kind, namespace and name each ended by a NUL, one byte 'D' (delete) or
// 'W' (write), and the object's YAML. Replay stops at the first record whose length, CRC or
// epoch does not fit: a torn tail or the previous epoch's leftovers.
const (
	journalName   = ".journal"
	journalMagic  = "ewgjrnl1"
	journalHeader = 16
	journalRecord = 16 // record header: length, crc, epoch
	journalBatch  = 256
)

// journalSize is the journal's preallocated size: about 5,000 WorkloadEntries between checkpoints.
var journalSize int64 = 4 << 20

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// journalEntry is one queued write and what to call once it is durable (or has failed).
type journalEntry struct {
	kind, namespace, name string
	del                   bool
	data                  []byte
	done                  func(error)
}

type journal struct {
	dir   string
	f     *os.File
	epoch uint64
	pos   int64
	dirty map[string]bool // YAML files and directories written since the last checkpoint
	// fresh: the current epoch's header is not on disk yet (the disk was full at open); the
	// first write starts an epoch, so that a store on a full disk opens and its writes fail.
	fresh bool

	mu      sync.Mutex
	queue   []*journalEntry
	closed  bool
	wake    chan struct{} // capacity 1
	stopped chan struct{} // closed when the committer has returned

	// The files are written by the writer goroutine, in journal order, while the committer syncs
	// the next batch: a caller waits for the journal's sync, not for the file.
	files   chan []*journalEntry
	drained chan struct{} // the writer's answer to a nil batch: all before it is written
	fileErr error         // the first error writing a file; the next checkpoint fails with it
}

// openJournal replays dir's journal onto the YAML files, checkpoints, and starts the committer.
func openJournal(dir string) (*journal, error) {
	path := filepath.Join(dir, journalName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	j := &journal{
		dir: dir, f: f, dirty: map[string]bool{}, wake: make(chan struct{}, 1), stopped: make(chan struct{}),
		files: make(chan []*journalEntry, 16), drained: make(chan struct{}),
	}
	go j.writeFiles()
	if err := j.recover(); err != nil {
		close(j.files)
		_ = f.Close()
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	go j.run()
	return j, nil
}

// writeFiles writes the YAML files of committed batches; a nil batch asks for drained.
func (j *journal) writeFiles() {
	for batch := range j.files {
		if batch == nil {
			j.drained <- struct{}{}
			continue
		}
		for _, e := range batch {
			// A file that cannot be written (a full disk) does not fail the write: it is
			// durable in the journal, and the next checkpoint (or open) writes the file again.
			if err := j.apply(e); err != nil && j.fileErr == nil {
				j.fileErr = fmt.Errorf("write %s %s/%s: %w", e.kind, e.namespace, e.name, err)
			}
			e.done(nil)
		}
	}
}

// drain waits until the writer has written every file handed to it. The writer's state (dirty,
// fileErr) is the committer's again until the next batch is handed over.
func (j *journal) drain() {
	j.files <- nil
	<-j.drained
}

// recover applies the records of the current epoch, syncs them, and starts a new epoch on a
// preallocated file.
func (j *journal) recover() error {
	data, err := io.ReadAll(j.f)
	if err != nil {
		return err
	}
	replayed := 0
	if len(data) >= journalHeader && string(data[:8]) == journalMagic {
		j.epoch = binary.LittleEndian.Uint64(data[8:16])
		for _, e := range decodeRecords(data[journalHeader:], j.epoch) {
			if err := j.apply(e); err != nil {
				return fmt.Errorf("replay %s %s/%s: %w", e.kind, e.namespace, e.name, err)
			}
			replayed++
		}
	}
	err = j.checkpoint()
	if err != nil && replayed == 0 {
		j.fresh, err = true, nil
	}
	return err
}

// reapply writes the files of the current epoch's records again, as open does.
func (j *journal) reapply() error {
	data := make([]byte, j.pos-journalHeader)
	if _, err := j.f.ReadAt(data, journalHeader); err != nil {
		return err
	}
	for _, e := range decodeRecords(data, j.epoch) {
		if err := j.apply(e); err != nil {
			return fmt.Errorf("write %s %s/%s: %w", e.kind, e.namespace, e.name, err)
		}
	}
	return nil
}

// prealloc writes zeros up to journalSize once (not fallocate, whose unwritten extents would
// change metadata on first write): later overwrites and syncs then touch no filesystem metadata.
// Only an optimisation: on a full disk the journal grows as it is written.
func (j *journal) prealloc() {
	fi, err := j.f.Stat()
	if err != nil || fi.Size() >= journalSize {
		return
	}
	_, _ = j.f.WriteAt(make([]byte, journalSize-fi.Size()), fi.Size())
}

func decodeRecords(b []byte, epoch uint64) []*journalEntry {
	var out []*journalEntry
	for len(b) >= journalRecord {
		n := int(binary.LittleEndian.Uint32(b[0:4]))
		if n < journalRecord || n > len(b) || binary.LittleEndian.Uint64(b[8:16]) != epoch ||
			crc32.Checksum(b[8:n], crcTable) != binary.LittleEndian.Uint32(b[4:8]) {
			break
		}
		parts := bytes.SplitN(b[journalRecord:n], []byte{0}, 4)
		if len(parts) != 4 || len(parts[3]) == 0 {
			break
		}
		out = append(out, &journalEntry{
			kind: string(parts[0]), namespace: string(parts[1]), name: string(parts[2]),
			del: parts[3][0] == 'D', data: parts[3][1:],
		})
		b = b[n:]
	}
	return out
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
	if e.del {
		buf = append(buf, 'D')
	} else {
		buf = append(buf, 'W')
	}
	buf = append(buf, e.data...)
	rec := buf[start:]
	binary.LittleEndian.PutUint32(rec[0:4], uint32(len(rec)))
	binary.LittleEndian.PutUint64(rec[8:16], j.epoch)
	binary.LittleEndian.PutUint32(rec[4:8], crc32.Checksum(rec[8:], crcTable))
	return buf
}

// submit queues e. e.done is called once, by the file writer (in submission order) when e is
// durable and its file written, or by the committer when the journal could not be written.
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

// close commits what is queued, stops the committer and closes the file.
func (j *journal) close() error {
	j.mu.Lock()
	if !j.closed {
		j.closed = true
		close(j.wake)
	}
	j.mu.Unlock()
	<-j.stopped
	return j.f.Close()
}

func (j *journal) run() {
	defer close(j.stopped)
	defer close(j.files)
	defer j.drain()
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

// commit makes batch durable in the journal, writes the YAML files, and calls each done.
func (j *journal) commit(buf []byte, batch []*journalEntry) []byte {
	for len(batch) > 0 {
		var n int
		var err error
		buf, n, err = j.fill(buf[:0], batch)
		if err == nil {
			err = j.write(buf)
		} else {
			n = 1 // the first write fails; the others try again
		}
		if err == nil {
			j.files <- batch[:n:n] // the writer calls done once the file is written
		} else {
			for _, e := range batch[:n] {
				e.done(err)
			}
		}
		batch = batch[n:]
	}
	return buf
}

// fill encodes as many of batch as fit in the journal, checkpointing first if the first does not.
func (j *journal) fill(buf []byte, batch []*journalEntry) ([]byte, int, error) {
	if j.fresh {
		if err := j.checkpoint(); err != nil {
			return buf, 0, err
		}
		j.fresh = false
	}
	n := 0
	for _, e := range batch {
		next := j.encode(buf, e)
		if j.pos+int64(len(next)) > journalSize {
			if n > 0 {
				break
			}
			if j.pos > journalHeader {
				if err := j.checkpoint(); err != nil {
					return buf, 0, fmt.Errorf("checkpoint: %w", err)
				}
				next = j.encode(buf[:0], e) // the epoch changed
			}
			if j.pos+int64(len(next)) > journalSize {
				return buf, 0, fmt.Errorf("object of %d bytes does not fit in the journal (%d bytes)", len(e.data), journalSize)
			}
		}
		buf = next
		n++
	}
	return buf, n, nil
}

func (j *journal) write(buf []byte) error {
	if _, err := j.f.WriteAt(buf, j.pos); err != nil {
		return err
	}
	if err := fdatasync(j.f); err != nil {
		return err
	}
	j.pos += int64(len(buf))
	return nil
}

// apply writes e's YAML file in place (or removes it) without syncing: the journal holds the
// write until the next checkpoint, and a file torn by a crash is rewritten by the replay at
// open. In place, because creating a file costs far more than rewriting one (a new inode).
func (j *journal) apply(e *journalEntry) error {
	nsDir := filepath.Join(j.dir, plurals[e.kind], e.namespace)
	path := filepath.Join(nsDir, e.name+".yaml")
	j.dirty[nsDir] = true
	if e.del {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	if err := os.MkdirAll(nsDir, 0o750); err != nil {
		return err
	}
	j.dirty[filepath.Dir(nsDir)] = true
	j.dirty[path] = true
	return os.WriteFile(path, e.data, 0o640)
}

// checkpoint syncs the YAML files written since the last one, then starts a new epoch: the
// records before it are no longer needed.
func (j *journal) checkpoint() error {
	j.drain()
	if j.fileErr != nil {
		// Some file of this epoch was not written: write them all again from the journal
		// before it starts over. Failing, the journal keeps its records.
		if err := j.reapply(); err != nil {
			return err
		}
		j.fileErr = nil
	}
	if err := syncTree(j.dir, j.dirty); err != nil {
		return err
	}
	clear(j.dirty)
	j.prealloc()
	var h [journalHeader]byte
	copy(h[:], journalMagic)
	binary.LittleEndian.PutUint64(h[8:], j.epoch+1)
	if _, err := j.f.WriteAt(h[:], 0); err != nil {
		return err
	}
	if err := j.f.Sync(); err != nil {
		return err
	}
	j.epoch++
	j.pos = journalHeader
	return nil
}

// syncEach fsyncs every path of dirty that still exists, then dir itself.
func syncEach(dir string, dirty map[string]bool) error {
	for p := range dirty {
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return syncDir(dir)
}
