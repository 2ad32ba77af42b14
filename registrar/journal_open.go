package registrar

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"go.uber.org/zap"
)

// Recovery says what opening a file store found in its journal.
type Recovery struct {
	// Replayed is the number of records of the last epoch written again to their files.
	Replayed int
	// Unwritten is the number of objects whose file could not be written from the journal (a
	// full disk): they are served from the journal, which keeps them until their files are.
	Unwritten int
	// Damaged says what part of the journal could not be read ("" when all of it could).
	Damaged string
	// Lost is the number of records found after a damaged one (replayed nonetheless); the
	// damaged record itself is lost, or was a write in flight at a crash, never reported done.
	Lost int
}

// openJournal replays dir's journal onto the YAML files and starts the committer. It never
// fails: a journal that cannot be opened, read or replayed is logged and the store goes on with
// what it has (see Recovery). It returns the records whose files could not be written, which
// the store serves from memory.
func openJournal(dir string, log *zap.Logger) (*journal, []*journalEntry, Recovery) {
	j := &journal{
		dir: dir, path: filepath.Join(dir, journalName), log: log, limit: journalHeader,
		wake: make(chan struct{}, 1), stopped: make(chan struct{}),
	}
	j.w.start(j)
	defer func() { go j.run() }()
	var rec Recovery
	f, err := os.OpenFile(j.path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		rec.Damaged = fmt.Sprintf("the journal cannot be opened: %v", err)
		log.Error("file store: the journal cannot be opened; the store serves its files, and writes fail until the journal "+
			"can be created (check the permissions and free space of the store's directory)", zap.String("journal", j.path), zap.Error(err))
		j.fresh = true
		return j, nil, rec
	}
	j.f = f
	recs, damaged, lost := j.read()
	rec.Damaged, rec.Lost, rec.Replayed = damaged, lost, len(recs)
	if damaged != "" {
		log.Warn("file store: the journal could not be replayed fully; a write in flight when the process died (never "+
			"reported done) leaves a torn record; otherwise the disk is damaged and the write of that record is lost: "+
			"check the VMs' entries (a VM that reconnects writes its entry again)",
			zap.String("journal", j.path), zap.String("damage", damaged), zap.Int("replayed", len(recs)), zap.Int("after_damage", lost))
	}
	failed, ferr := j.w.applyAll(recs)
	if len(recs) > 0 {
		log.Info("file store: journal replayed onto the files", zap.String("journal", j.path),
			zap.Int("records", len(recs)), zap.Int("unwritten", len(failed)))
	}
	if len(failed) > 0 {
		// Keep the epoch: its records stay in the journal (appended to from j.pos) until a
		// checkpoint has written their files.
		rec.Unwritten = len(failed)
		j.w.fileErr = ferr
		j.limit = max(j.pos, j.size())
		log.Warn("file store: objects in the journal could not be written to their files; they are served from the journal, "+
			"which keeps them until a checkpoint writes them (free space on the store's volume)",
			zap.String("dir", dir), zap.Int("objects", len(failed)), zap.Error(ferr))
		return j, values(failed), rec
	}
	if err := j.checkpoint(); err != nil {
		if len(recs) == 0 {
			j.fresh = true // a full disk: the first write starts the epoch, and fails while it is full
		} else {
			j.w.fileErr = err // the next checkpoint writes this epoch's files again
			j.limit = max(j.pos, j.size())
		}
		log.Warn("file store: the journal could not start a new epoch; writes fail while its volume is full",
			zap.String("journal", j.path), zap.Error(err))
	}
	return j, nil, rec
}

func values(m map[string]*journalEntry) []*journalEntry {
	out := make([]*journalEntry, 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	return out
}

func (j *journal) size() int64 {
	fi, err := j.f.Stat()
	if err != nil {
		return 0
	}
	return fi.Size()
}

// read returns the current epoch's records, setting j.epoch and j.pos after the last one read;
// damaged says what could not be read, and lost how many records were found beyond a damaged
// one (they are returned too: each is a whole object, later than what the damage hid).
func (j *journal) read() (recs []*journalEntry, damaged string, lost int) {
	data, err := io.ReadAll(j.f)
	if err != nil {
		j.discard()
		return nil, fmt.Sprintf("unreadable (%v): nothing replayed", err), 0
	}
	j.pos = journalHeader
	if len(data) == 0 || allZero(data[:min(len(data), journalHeader)]) {
		return nil, "", 0 // new, or created on a full disk before its header was written
	}
	if len(data) < journalHeader || string(data[:8]) != journalMagic {
		// The header is damaged: take the epoch from the first record, if it checks out.
		if len(data) >= journalHeader+journalRecord {
			epoch := binary.LittleEndian.Uint64(data[journalHeader+8 : journalHeader+16])
			if rs, used := decodeRecords(data[journalHeader:], epoch); len(rs) > 0 {
				j.epoch, j.pos = epoch, journalHeader+int64(used)
				return rs, "header damaged (epoch taken from its first record)", 0
			}
		}
		j.discard()
		return nil, "header damaged and no record readable: nothing replayed", 0
	}
	j.epoch = binary.LittleEndian.Uint64(data[8:16])
	recs, used := decodeRecords(data[journalHeader:], j.epoch)
	j.pos = journalHeader + int64(used)
	tail := data[j.pos:]
	if cleanEnd(tail, j.epoch) {
		return recs, "", 0
	}
	damaged = fmt.Sprintf("torn or damaged record at offset %d", j.pos)
	// Look for records of this epoch after the damage (a damaged block, not a torn tail).
	for p := 1; p+journalRecord <= len(tail); p++ {
		if binary.LittleEndian.Uint64(tail[p+8:p+16]) != j.epoch {
			continue
		}
		if more, n := decodeRecords(tail[p:], j.epoch); len(more) > 0 {
			recs = append(recs, more...)
			j.pos += int64(p + n)
			return recs, damaged, len(more)
		}
	}
	return recs, damaged, 0
}

// discard empties a journal whose epoch is unknown, so that no record left in it can pass for
// one of the epochs that follow.
func (j *journal) discard() { _ = j.f.Truncate(0) }

// cleanEnd reports whether b, what follows the last record read, is where a journal normally
// ends: zeros (preallocated) or a record of an earlier epoch.
func cleanEnd(b []byte, epoch uint64) bool {
	if len(b) < journalRecord {
		return allZero(b)
	}
	return allZero(b[:journalRecord]) || binary.LittleEndian.Uint64(b[8:16]) != epoch
}

func allZero(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }

// reapply writes the files of the current epoch's records again.
func (j *journal) reapply() error {
	data := make([]byte, j.pos-journalHeader)
	if _, err := j.f.ReadAt(data, journalHeader); err != nil {
		return err
	}
	recs, _ := decodeRecords(data, j.epoch)
	_, err := j.w.applyAll(recs)
	return err
}

// checkpoint syncs the YAML files written since the last one, sizes the journal to its volume
// and starts a new epoch: the records before it are no longer needed.
func (j *journal) checkpoint() error {
	j.w.drain()
	if j.f == nil {
		f, err := os.OpenFile(j.path, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return err
		}
		j.f = f
	}
	if j.w.fileErr != nil {
		// Some file of this epoch was not written: write them all again from the journal
		// before it starts over. Failing, the journal keeps its records.
		if err := j.reapply(); err != nil {
			return err
		}
		j.w.fileErr = nil
	}
	if err := syncTree(j.dir, j.w.dirty); err != nil {
		return err
	}
	clear(j.w.dirty)
	j.resize()
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

// resize sets the journal's size for the next epoch: journalSize, but at most a sixteenth of
// the space its volume has (counting its own), at least journalMin. It writes zeros up to that
// size (not fallocate, whose unwritten extents would change metadata on first write), so that
// later overwrites and syncs touch no filesystem metadata; a journal larger than that is cut,
// giving space back to the files. Only the limit matters for correctness: a journal that
// cannot be preallocated grows as it is written, and its writes fail when the volume is full.
func (j *journal) resize() {
	size := j.size()
	target := journalSize
	if free, ok := freeSpace(j.dir); ok {
		target = min(target, (free+size)/16)
	}
	target = max(target&^4095, journalMin)
	if journalSize < journalMin {
		target = journalSize // tests
	}
	j.limit = target
	switch {
	case size > target:
		_ = j.f.Truncate(target)
	case size < target:
		if _, err := j.f.WriteAt(make([]byte, target-size), size); err != nil {
			_ = j.f.Truncate(size) // give back what the attempt took
		}
	}
}
