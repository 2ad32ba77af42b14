package config

import (
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/ewgate/ewgate/gateway/config/field"
)

// nodeIndex finds lines and field paths in the parsed file: the line of a path (for the errors
// validation finds, which know only the path) and the path of a key or value on a line (for the
// errors the decoder finds, which know only the line).
type nodeIndex struct {
	root  *yaml.Node
	nodes map[int][]namedNode // by line, in document order
}

// namedNode is a key or a value of the file and the field path it sits at.
type namedNode struct {
	key  bool
	node *yaml.Node
	path string
}

func indexNodes(root *yaml.Node) *nodeIndex {
	x := &nodeIndex{root: root, nodes: map[int][]namedNode{}}
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		x.root = root.Content[0]
	}
	x.walk(x.root, "")
	return x
}

func (x *nodeIndex) add(key bool, n *yaml.Node, path string) {
	x.nodes[n.Line] = append(x.nodes[n.Line], namedNode{key: key, node: n, path: path})
}

func (x *nodeIndex) walk(n *yaml.Node, path string) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := field.Join(path, k.Value)
			x.add(true, k, p)
			x.add(false, v, p)
			x.walk(v, p)
		}
	case yaml.SequenceNode:
		for i, v := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			x.add(false, v, p)
			x.walk(v, p)
		}
	}
}

// keyPath is the path of the key named key on line.
func (x *nodeIndex) keyPath(line int, key string) string {
	for _, nn := range x.nodes[line] {
		if nn.key && nn.node.Value == key {
			return nn.path
		}
	}
	return ""
}

// valuePath is the path of the value on line that the decoder's message shows: a list or a
// mapping (tag seq or map), or a scalar, which the decoder cuts to 7 characters and "...". With
// no tag, the first scalar on the line (a block mapping starts on the line of its first key).
// It returns the value in full, which the message may have cut.
func (x *nodeIndex) valuePath(line int, tag, shown string) (path, value string) {
	for _, nn := range x.nodes[line] {
		n := nn.node
		switch {
		case nn.key:
		case tag == "":
			if n.Kind == yaml.ScalarNode {
				return nn.path, n.Value
			}
		case tag == "seq" || tag == "map":
			if n.Kind == yaml.SequenceNode && tag == "seq" || n.Kind == yaml.MappingNode && tag == "map" {
				return nn.path, n.Value
			}
		case n.Kind == yaml.ScalarNode:
			if n.Value == shown || strings.HasSuffix(shown, "...") && strings.HasPrefix(n.Value, strings.TrimSuffix(shown, "...")) {
				return nn.path, n.Value
			}
		}
	}
	return "", shown
}

// lineOf finds the line of a field path such as listeners[1].routes[0].cluster: the line of its
// key (a block mapping or list as a value starts on the next line). It returns the line of the
// deepest field it reaches, so an error on a missing key points at the object that lacks it.
func (x *nodeIndex) lineOf(path string) int {
	n := x.root
	line := n.Line
	for _, part := range splitPath(path) {
		next, at := child(n, part)
		if next == nil {
			break
		}
		n, line = next, at
	}
	return line
}

func splitPath(path string) []string {
	var parts []string
	for _, seg := range strings.Split(path, ".") {
		for seg != "" {
			i := strings.IndexByte(seg, '[')
			if i < 0 {
				parts = append(parts, seg)
				break
			}
			if i > 0 {
				parts = append(parts, seg[:i])
			}
			j := strings.IndexByte(seg, ']')
			if j < i {
				break
			}
			parts = append(parts, seg[i:j+1])
			seg = seg[j+1:]
		}
	}
	return parts
}

// child is the node at part ([2] in a list, a key in a mapping) and the line where it is named.
func child(n *yaml.Node, part string) (*yaml.Node, int) {
	if strings.HasPrefix(part, "[") {
		i, err := strconv.Atoi(strings.Trim(part, "[]"))
		if err != nil || n.Kind != yaml.SequenceNode || i < 0 || i >= len(n.Content) {
			return nil, 0
		}
		return n.Content[i], n.Content[i].Line
	}
	if n.Kind != yaml.MappingNode {
		return nil, 0
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Value == part {
			return n.Content[i+1], k.Line
		}
	}
	return nil, 0
}
