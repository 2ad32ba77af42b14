// Package gateway is ewgate assembled: it takes the whole config file (*config.File), starts the
// components the file asks for in order (the data plane, the admin servers, the registrar's
// store, authn and the registrar, the built-in control plane and the CA, the VM control
// endpoint, the gateway's xDS client), owns reloads on one goroutine and stops everything with
// one Shutdown contract: readiness 503 and every listener closed first, then one common drain,
// then the components behind them. Each component adds its own admin pages once it runs.
//
// It does not parse flags, handle signals or build the logger: cmd/ewgate does, and calls it:
//
//	g, err := gateway.Start(cfg, gateway.Options{Path: path, Loaded: raw, Logger: log})
//	...
//	g.Reload("SIGHUP")          // on SIGHUP; the file watcher asks for reloads by itself
//	...
//	err = g.Shutdown(ctx)       // on SIGTERM; ctx ends on a second signal (cut at once)
package gateway
