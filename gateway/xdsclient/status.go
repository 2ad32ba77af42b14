package xdsclient

import (
	"time"
)

// Status is the client's state for the admin pages (GET /debug/xds, the status page and
// `ewgate status`): the server, the stream, and per resource type the last response and what
// was answered to it.
type Status struct {
	Server         string       `json:"server"`
	Connected      bool         `json:"connected"`
	ConnectedSince *time.Time   `json:"connected_since,omitempty"` // the open stream's start
	Ready          bool         `json:"ready"`                     // a first complete set of routes was applied
	LastApplied    *time.Time   `json:"last_applied,omitempty"`    // routes last applied
	Types          []TypeStatus `json:"types"`                     // lds, cds, eds: those a response came for
}

// TypeStatus is one resource type's last response and the answer to it.
type TypeStatus struct {
	Type         string    `json:"type"`                 // lds, cds or eds
	LastResponse time.Time `json:"last_response"`        // the last push received
	Version      string    `json:"version"`              // the last ACKed version
	LastACK      time.Time `json:"last_ack,omitzero"`    // when a response was last ACKed
	LastNACK     time.Time `json:"last_nack,omitzero"`   // when a response was last NACKed
	NACKError    string    `json:"nack_error,omitempty"` // why the last NACK (empty once a later response is ACKed)
	Responses    uint64    `json:"responses"`            // received since start
}

// observed is what Status reads; guarded by Client.mu.
type observed struct {
	connectedSince time.Time // zero: no stream open
	types          map[string]*TypeStatus
}

func (c *Client) observeConnected(up bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.obs.connectedSince = time.Time{}
	if up {
		c.obs.connectedSince = time.Now()
	}
}

func (c *Client) observeResponse(typ, version string, nack error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.obs.types == nil {
		c.obs.types = map[string]*TypeStatus{}
	}
	ts := c.obs.types[typ]
	if ts == nil {
		ts = &TypeStatus{Type: typ}
		c.obs.types[typ] = ts
	}
	now := time.Now()
	ts.LastResponse = now
	ts.Responses++
	if nack != nil {
		ts.LastNACK, ts.NACKError = now, nack.Error()
		return
	}
	ts.LastACK, ts.Version, ts.NACKError = now, version, ""
}

// Status returns the client's state now.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := Status{Server: c.opts.Target, Connected: !c.obs.connectedSince.IsZero(), Ready: c.Ready(), Types: []TypeStatus{}}
	if st.Connected {
		t := c.obs.connectedSince
		st.ConnectedSince = &t
	}
	if !c.last.IsZero() {
		t := c.last
		st.LastApplied = &t
	}
	for _, typ := range []string{"cds", "lds", "eds", "other"} {
		if ts := c.obs.types[typ]; ts != nil {
			st.Types = append(st.Types, *ts)
		}
	}
	return st
}
