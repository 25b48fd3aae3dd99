// Package lameduck lets a Go service shut down gracefully on Kubernetes, coordinated by
// the lameduck preStop sidecar.
//
// # The problem in Go terms
//
// When a pod is deleted, Kubernetes removes it from load balancing and, at the same time,
// runs the container's preStop hook and then sends SIGTERM. Load balancers catch up
// seconds later, so a service that calls srv.Shutdown at once on SIGTERM refuses requests
// that are still on their way. A service whose cleanup (flushing a buffer, committing
// offsets) outlasts terminationGracePeriodSeconds is SIGKILLed in the middle of it. And
// the common pattern
//
//	go func() { <-sigs; os.Exit(0) }()
//
// skips every deferred call in main: whatever the deferred functions should have written
// is lost.
//
// # The shutdown sequence
//
// The lameduck webhook adds a sidecar to the pod, sets LAMEDUCK_SOCKET in the container
// and makes the container's preStop hook wait for the sidecar. Over the socket the
// sidecar walks the process through these steps, all before SIGTERM:
//
//  1. Deregister. The pod is leaving the endpoints but traffic still arrives. The
//     process keeps serving; [Shutdown.Deregistering] is closed, the [Shutdown.Handler]
//     middleware answers with "Connection: close" (HTTP/2: GOAWAY) and [Shutdown.Serve]
//     disables keep-alives, so that clients reconnect to other pods. The connections
//     counted by [Shutdown.Listener] tell the sidecar when traffic has stopped arriving.
//  2. Drain. [Shutdown.Draining] is closed and the functions registered with
//     [Shutdown.OnDrain] run concurrently with a context that carries the sidecar's
//     deadline: they stop accepting and wait for the work in progress, the way
//     http.Server.Shutdown does (Serve registers exactly that).
//  3. Cleanup. The functions registered with [Shutdown.Defer] run one by one, last
//     registered first, like deferred calls, with the same deadline. Then the process
//     tells the sidecar it is done, and the sidecar lets the preStop hook return.
//  4. Exit. The kubelet sends SIGTERM; the cleanup already ran, so [Shutdown.Wait] (or
//     Serve) returns and main returns.
//
// Without a sidecar (LAMEDUCK_SOCKET unset: a laptop, a test, a pod without injection)
// the same program shuts down on SIGTERM or SIGINT: drain, then cleanup, with a deadline
// of the grace period minus two seconds, then Wait returns. In an injected container
// whose sidecar cannot be reached, the delay the preStop hook waited for it comes off the
// grace period first. The same happens if SIGTERM arrives before the sidecar sent the
// drain. A sidecar that disappears while the pod deregisters costs no traffic: the
// process serves on until the deregister phase's planned end, looking for the sidecar
// meanwhile, and drains with the sequence's deadline if it does not come back; one that
// disappears during the drain or the cleanup leaves the process to finish them alone.
// Whatever starts the shutdown, each cleanup function runs exactly once and before the
// process exits.
//
// # Using it
//
//	func main() {
//		sd, err := lameduck.Start(context.Background(), lameduck.Options{})
//		if err != nil {
//			log.Print(err) // no sidecar coordination; SIGTERM still works
//		}
//		w := newBatchWriter()
//		sd.Defer(w.Flush) // func(context.Context) error
//
//		ln, err := net.Listen("tcp", ":8080")
//		if err != nil {
//			log.Fatal(err)
//		}
//		srv := &http.Server{Handler: newMux(w)}
//		if err := sd.Serve(context.Background(), srv, ln); err != nil {
//			log.Fatal(err)
//		}
//	}
//
// Services that are not HTTP servers register their own drain work with OnDrain (stop a
// consumer, close a gRPC server gracefully) and block in Wait.
//
// The wire protocol is specified in docs/protocol.md of the lameduck repository. Package
// lameducktest runs a program through the shutdown sequence against a real sidecar, the
// way the kubelet does, for tests.
package lameduck
