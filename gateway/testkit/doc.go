// Package testkit holds the helpers of ewgate's own tests: a PKI (CAs, intermediates, server and
// SPIFFE workload certificates, PEM files), service-account token minting with its JWKS, a
// manually advanced clock, Eventually, which waits on a condition under a deadline, and Metric,
// which reads a counter or gauge from a registry.
//
// It is for ewgate's tests only: no non-test file of the module may import it (a test in this
// package checks that). It imports only the standard library, go-jose and Prometheus's client,
// never an ewgate package, so the internal tests of every package, authn and registrar
// included, can use it without an import cycle. It is not under an internal/ folder because authn/ and registrar/
// could not import it from there.
//
// Every helper takes the test's testing.TB and fails the test on error, so callers check
// nothing. Keys are ECDSA P-256 for certificates (what every caller needs) and RSA 2048 for
// token issuers (what kube-apiserver uses).
package testkit
