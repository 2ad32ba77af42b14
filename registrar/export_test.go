package registrar

import "encoding/json"

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

// RenderYAML renders o's file as the file store writes it now: from its JSON.
func RenderYAML(o any, kind string) ([]byte, error) {
	js, err := json.Marshal(o)
	if err != nil {
		return nil, err
	}
	return renderYAML(nil, apiVersions[kind], kind, js)
}

// EncodeYAMLv3 renders o's file as earlier versions of the file store wrote it (through yaml.v3).
func EncodeYAMLv3(o any, kind string) ([]byte, error) {
	return encodeObject(o, apiVersions[kind], kind)
}
