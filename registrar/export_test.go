package registrar

// SetJournalSize shrinks the file store's journal for a test (so that it fills and checkpoints
// often) and returns the function that restores it. Not for parallel tests.
func SetJournalSize(n int64) (restore func()) {
	old := journalSize
	journalSize = n
	return func() { journalSize = old }
}
