package registrar

// SetJournalSize shrinks the file store's journal for a test (so that it fills and checkpoints
// often) and returns the function that restores it. Not for parallel tests.
func SetJournalSize(n int64) (restore func()) {
	old := journalSize
	journalSize = n
	return func() { journalSize = old }
}

// FilesQueued is how many committed writes wait for their YAML file.
func (s *FileStore) FilesQueued() int {
	s.j.w.mu.Lock()
	defer s.j.w.mu.Unlock()
	return len(s.j.w.queue)
}
