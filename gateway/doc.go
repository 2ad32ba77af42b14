// Package gateway is reserved for the assembled gateway: the components under it (the data plane,
// the xDS client, the built-in control plane, the mesh CA, the VM control endpoint) started,
// reloaded and stopped in order by one owner. Until that lands, cmd/ewgate wires them.
package gateway
