package registrar_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/storetest"
)

// writeThree creates alpha, bravo and charlie in a new store in dir and closes it: the journal
// keeps their records (no checkpoint at close).
func writeThree(t *testing.T, dir string) {
	t.Helper()
	s, err := registrar.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"alpha", "bravo", "charlie"} {
		if _, err := s.WorkloadEntries().Create(t.Context(), storetest.Entry("ns", n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func entryPath(dir, name string) string {
	return filepath.Join(dir, "workloadentries", "ns", name+".yaml")
}

// openLogged opens the store in dir with a logger whose warnings and errors the test reads.
func openLogged(t *testing.T, dir string) (*registrar.FileStore, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.WarnLevel)
	s, err := registrar.OpenFileStoreWith(dir, registrar.FileStoreOptions{Logger: zap.New(core)})
	if err != nil {
		t.Fatalf("a damaged journal stopped the store from opening: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, logs
}

// TestFileStoreJournalDamaged: a journal that cannot be replayed fully never stops the store
// from opening; what could be read is replayed, the damage is logged and reported (Recovery),
// and the store takes writes afterwards.
func TestFileStoreJournalDamaged(t *testing.T) {
	for _, tc := range []struct {
		name    string
		damage  func(j []byte) // changes the journal's bytes in place
		present []string       // entries the reopened store must have (their files were removed)
		absent  []string
		lost    int
		log     string
	}{{
		// The last record cut short (a write in flight at a crash): the others come back.
		name: "torn tail",
		damage: func(j []byte) {
			end := len(bytes.TrimRight(j, "\x00"))
			j[end-1] ^= 0xff
		},
		present: []string{"alpha", "bravo"}, absent: []string{"charlie"}, log: "torn or damaged record",
	}, {
		// A damaged record in the middle: it is lost, the record after it is still replayed.
		name: "bad CRC in the middle",
		damage: func(j []byte) {
			i := bytes.Index(j, []byte("bravo\x00J"))
			j[i+10] ^= 0xff
		},
		present: []string{"alpha", "charlie"}, absent: []string{"bravo"}, lost: 1, log: "torn or damaged record",
	}, {
		name:    "header damaged",
		damage:  func(j []byte) { copy(j, "garbage!") },
		present: []string{"alpha", "bravo", "charlie"}, log: "header damaged",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeThree(t, dir)
			jpath := filepath.Join(dir, ".journal")
			j, err := os.ReadFile(jpath)
			if err != nil {
				t.Fatal(err)
			}
			tc.damage(j)
			if err := os.WriteFile(jpath, j, 0o600); err != nil {
				t.Fatal(err)
			}
			for _, n := range append(tc.present, tc.absent...) {
				if err := os.Remove(entryPath(dir, n)); err != nil {
					t.Fatal(err)
				}
			}
			s, logs := openLogged(t, dir)
			rec := s.Recovery()
			if !strings.Contains(rec.Damaged, tc.log) || rec.Lost != tc.lost {
				t.Errorf("recovery %+v: want damage %q and %d records found after it", rec, tc.log, tc.lost)
			}
			if logs.FilterMessageSnippet("could not be replayed fully").Len() != 1 {
				t.Errorf("no warning about the journal; logged %v", logs.All())
			}
			for _, n := range tc.present {
				if _, err := s.WorkloadEntries().Get(t.Context(), "ns", n); err != nil {
					t.Errorf("%s: replayed write missing: %v", n, err)
				}
				if _, err := os.Stat(entryPath(dir, n)); err != nil {
					t.Errorf("%s: file not written back: %v", n, err)
				}
			}
			for _, n := range tc.absent {
				if _, err := s.WorkloadEntries().Get(t.Context(), "ns", n); err == nil {
					t.Errorf("%s: the damaged record was replayed", n)
				}
			}
			if _, err := s.WorkloadEntries().Create(t.Context(), storetest.Entry("ns", "after")); err != nil {
				t.Fatalf("write after a damaged journal: %v", err)
			}
		})
	}
}

// TestFileStoreJournalUnopenable: a journal that cannot be opened at all (here a directory in
// its place) still lets the store open and serve its files; writes fail saying which journal
// and what to do.
func TestFileStoreJournalUnopenable(t *testing.T) {
	dir := t.TempDir()
	writeThree(t, dir)
	jpath := filepath.Join(dir, ".journal")
	if err := os.Remove(jpath); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(jpath, 0o700); err != nil {
		t.Fatal(err)
	}
	s, logs := openLogged(t, dir)
	if logs.FilterMessageSnippet("the journal cannot be opened").Len() != 1 {
		t.Errorf("no error logged about the journal; logged %v", logs.All())
	}
	if _, err := s.WorkloadEntries().Get(t.Context(), "ns", "bravo"); err != nil {
		t.Fatalf("the store does not serve its files: %v", err)
	}
	_, err := s.WorkloadEntries().Create(t.Context(), storetest.Entry("ns", "delta"))
	if err == nil || !strings.Contains(err.Error(), jpath) {
		t.Fatalf("write without a journal: %v; want an error naming %s", err, jpath)
	}
	if _, err := s.WorkloadEntries().Get(t.Context(), "ns", "delta"); err == nil {
		t.Fatal("a failed write is visible")
	}
	// Once the journal can be created, writes work again without a restart.
	if err := os.Remove(jpath); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WorkloadEntries().Create(t.Context(), storetest.Entry("ns", "delta")); err != nil {
		t.Fatalf("write once the journal can be created: %v", err)
	}
}

// TestFileStoreJournalUnknownEpoch: a journal whose header and first record are damaged is
// replayed not at all, and emptied: none of its old records may pass for the next epoch's. Here
// the next epoch's first record (alpha again, same size) ends where an old record starts.
func TestFileStoreJournalUnknownEpoch(t *testing.T) {
	dir := t.TempDir()
	writeThree(t, dir)
	jpath := filepath.Join(dir, ".journal")
	j, err := os.ReadFile(jpath)
	if err != nil {
		t.Fatal(err)
	}
	copy(j, "garbage!")
	j[bytes.Index(j, []byte("alpha\x00J"))+10] ^= 0xff
	if err := os.WriteFile(jpath, j, 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := openLogged(t, dir)
	if rec := s.Recovery(); !strings.Contains(rec.Damaged, "no record readable") {
		t.Fatalf("recovery %+v: want the header reported damaged", rec)
	}
	a, err := s.WorkloadEntries().Get(t.Context(), "ns", "alpha")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.WorkloadEntries().Update(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, _ := openLogged(t, dir)
	if rec := s2.Recovery(); rec.Replayed != 1 {
		t.Fatalf("recovery %+v: want only the one record written since the damage replayed", rec)
	}
}
