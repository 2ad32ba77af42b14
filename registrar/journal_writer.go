package registrar

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"
)

// fileWriter writes the YAML files of committed records, in journal order, off the callers'
// path. Creating a file is the costly part (a new inode: 25-30 us of kernel CPU on a quiet
// ext4; 0.3-0.5 ms on an ext4 without a journal when many files were deleted in the last
// minutes, as its inode allocator then skips each recently deleted inode in turn), so the
// writer gives way to the callers: it writes once no record has been committed for writerIdle,
// or when what waits reaches 1/writerBacklog of the journal, or when asked to drain
// (checkpoint, Flush, Close). Its queue is bounded by the journal: a checkpoint (journal full)
// drains it first.
type fileWriter struct {
	j    *journal
	kick chan struct{} // capacity 1: something changed
	done chan struct{}

	mu       sync.Mutex
	idle     *sync.Cond // on mu: the queue is empty and nothing is being written
	queue    []*journalEntry
	queued   int64     // bytes of data in queue
	last     time.Time // when a batch was last added
	busy     bool      // a batch taken from queue is being written
	drainers int       // drain calls waiting
	stopped  bool

	// Owned by whoever holds the writer idle (the writer goroutine while busy, the committer
	// after drain).
	dirty   map[string]bool // files and directories written since the last checkpoint (if trackFiles)
	buf     []byte          // the file being written
	fileErr error           // the first file of this epoch that could not be written
}

// writerIdle is how long the store must have been quiet before the writer writes files.
const writerIdle = 5 * time.Millisecond

// writerBacklog: while the store is busy, up to 1/writerBacklog of the journal (half: about
// 2,000 WorkloadEntries) waits for its files, so that a burst that size costs the callers no
// file. An eighth was measured too: it cuts fourfold what a checkpoint waits for under a
// sustained load, but sustained rates were within the noise of half's (the writer, not the
// threshold, bounds them when creating a file is slow) and bursts of 2,000 fell to 0.6-0.75x.
const writerBacklog = 2

func (w *fileWriter) start(j *journal) {
	w.j, w.dirty = j, map[string]bool{}
	w.kick, w.done = make(chan struct{}, 1), make(chan struct{})
	w.idle = sync.NewCond(&w.mu)
	go w.run()
}

func (w *fileWriter) poke() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *fileWriter) add(batch []*journalEntry) {
	w.mu.Lock()
	w.queue = append(w.queue, batch...)
	for _, e := range batch {
		w.queued += int64(len(e.data)) + journalRecord
	}
	w.last = time.Now()
	w.mu.Unlock()
	w.poke()
}

// drain waits until every file handed over is written. Until the next add, the writer's state
// (dirty, fileErr) belongs to the caller.
func (w *fileWriter) drain() {
	w.mu.Lock()
	w.drainers++
	w.poke()
	for len(w.queue) > 0 || w.busy {
		w.idle.Wait()
	}
	w.drainers--
	w.mu.Unlock()
}

// stop writes what is queued and ends the writer goroutine.
func (w *fileWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	w.poke()
	<-w.done
}

func (w *fileWriter) run() {
	defer close(w.done)
	quiet := time.NewTimer(time.Hour)
	defer quiet.Stop()
	for {
		w.mu.Lock()
		if len(w.queue) == 0 {
			stopped := w.stopped
			w.mu.Unlock()
			if stopped {
				return
			}
			<-w.kick
			continue
		}
		all := w.drainers > 0 || w.stopped
		if wait := time.Until(w.last.Add(writerIdle)); !all && w.queued < w.j.limit/writerBacklog && wait > 0 {
			w.mu.Unlock()
			quiet.Reset(wait)
			select {
			case <-w.kick:
			case <-quiet.C:
			}
			continue
		}
		// One file at a time, so that a write arriving meanwhile stops the writer again.
		n := 1
		if all {
			n = len(w.queue)
		}
		batch := w.queue[:n:n]
		w.queue, w.busy = w.queue[n:], true
		for _, e := range batch {
			w.queued -= int64(len(e.data)) + journalRecord
		}
		w.mu.Unlock()
		w.write(batch)
		w.mu.Lock()
		w.busy = false
		w.idle.Broadcast()
		w.mu.Unlock()
	}
}

func (w *fileWriter) write(batch []*journalEntry) {
	for _, e := range batch {
		// A file that cannot be written (a full disk) does not fail the write: it is durable
		// in the journal, and the next checkpoint (or open) writes it again.
		if err := w.apply(e); err != nil && w.fileErr == nil {
			w.fileErr = fmt.Errorf("write %s %s/%s: %w", e.kind, e.namespace, e.name, err)
			w.j.log.Warn("file store: a file could not be written; the write is durable in the journal, "+
				"which keeps it until the file is written at the next checkpoint (free space on the store's volume)",
				zap.String("dir", w.j.dir), zap.Error(w.fileErr))
		}
	}
}

// apply writes e's YAML file in place (or removes it) without syncing: the journal holds the
// write until the next checkpoint, and a file torn by a crash is rewritten by the replay at
// open. In place, because creating a file costs far more than rewriting one (a new inode). The
// file is opened first and its directory made only when that fails: no stat per file.
func (w *fileWriter) apply(e *journalEntry) error {
	nsDir := filepath.Join(w.j.dir, plurals[e.kind], e.namespace)
	path := filepath.Join(nsDir, e.name+".yaml")
	w.note(nsDir)
	if e.del {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	var err error
	if w.buf, err = e.render(w.buf[:0]); err != nil {
		return err
	}
	w.note(path)
	err = os.WriteFile(path, w.buf, 0o640)
	if errors.Is(err, fs.ErrNotExist) {
		if err = os.MkdirAll(nsDir, 0o750); err != nil {
			return err
		}
		w.note(filepath.Dir(nsDir), filepath.Dir(filepath.Dir(nsDir)))
		err = os.WriteFile(path, w.buf, 0o640)
	}
	if err != nil {
		// A file cut short by a full disk would not load: take it away; the journal has it.
		_ = os.Remove(path)
	}
	return err
}

// note records paths written since the last checkpoint, where a checkpoint syncs each of them
// (trackFiles).
func (w *fileWriter) note(paths ...string) {
	if !trackFiles {
		return
	}
	for _, p := range paths {
		w.dirty[p] = true
	}
}

// applyAll writes the files of recs in order and returns, per key, the last record whose file
// could not be written (none written after it), and the first error.
func (w *fileWriter) applyAll(recs []*journalEntry) (map[string]*journalEntry, error) {
	failed := map[string]*journalEntry{}
	var first error
	for _, e := range recs {
		if err := w.apply(e); err != nil {
			failed[e.key()] = e
			if first == nil {
				first = fmt.Errorf("write %s %s/%s: %w", e.kind, e.namespace, e.name, err)
			}
		} else {
			delete(failed, e.key())
		}
	}
	return failed, first
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
