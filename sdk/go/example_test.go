package lameduck_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	lameduck "github.com/lameduck-dev/lameduck/sdk/go"
)

// A worker that is not an HTTP server: it stops taking jobs on drain, and its cleanup
// runs before the sidecar lets the pod go. Terminate stands in for the SIGTERM that would
// start the shutdown without a sidecar.
func ExampleStart() {
	sd, err := lameduck.Start(context.Background(), lameduck.Options{})
	if err != nil {
		log.Print(err) // not coordinated by a sidecar; SIGTERM still starts the shutdown
	}

	jobs := make(chan int)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for job := range jobs {
			_ = job // work
		}
	}()
	sd.OnDrain(func(ctx context.Context) error {
		close(jobs) // take no new work, let the worker finish
		select {
		case <-stopped:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	sd.Defer(func(ctx context.Context) error {
		fmt.Println("offsets committed")
		return nil
	})

	sd.Terminate()
	if err := sd.Wait(context.Background()); err != nil {
		log.Fatal(err)
	}
	fmt.Println("exiting")
	// Output:
	// offsets committed
	// exiting
}

// Cleanup functions run last-registered first, like deferred calls, and exactly once,
// however the shutdown starts.
func ExampleShutdown_Defer() {
	sd, _ := lameduck.Start(context.Background(), lameduck.Options{})
	sd.Defer(func(context.Context) error {
		fmt.Println("close the database")
		return nil
	})
	sd.Defer(func(ctx context.Context) error {
		_, bounded := ctx.Deadline()
		fmt.Println("flush the write buffer; bounded by the grace period:", bounded)
		return nil
	})

	sd.Terminate()
	_ = sd.Wait(context.Background())
	// Output:
	// flush the write buffer; bounded by the grace period: true
	// close the database
}

// The usual HTTP service: Serve runs the server through deregister, drain and cleanup,
// and returns once the process may exit.
func ExampleShutdown_Serve() {
	sd, err := lameduck.Start(context.Background(), lameduck.Options{})
	if err != nil {
		log.Print(err)
	}
	var buffered []string
	sd.Defer(func(ctx context.Context) error {
		return writeAll(ctx, buffered) // must not be lost on shutdown
	})

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	ln, err := net.Listen("tcp", ":8080")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := sd.Serve(context.Background(), srv, ln); err != nil {
		log.Fatal(err)
	}
}

// With a server run by hand, wrap its listener and handler and register its Shutdown as
// drain work; then wait.
func ExampleShutdown_Listener() {
	sd, err := lameduck.Start(context.Background(), lameduck.Options{})
	if err != nil {
		log.Print(err)
	}
	ln, err := net.Listen("tcp", ":8080")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: sd.Handler(http.DefaultServeMux), ReadHeaderTimeout: 10 * time.Second}
	sd.OnDrain(srv.Shutdown)
	go func() {
		if err := srv.Serve(sd.Listener(ln)); err != http.ErrServerClosed {
			log.Print(err)
			sd.Terminate()
		}
	}()
	if err := sd.Wait(context.Background()); err != nil {
		log.Fatal(err)
	}
}

// A program that handles signals itself: with Signals empty the SDK handles none, and the
// program calls Terminate where SIGTERM would have started the shutdown.
func ExampleOptions_signals() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP)
	sd, err := lameduck.Start(context.Background(), lameduck.Options{Signals: []os.Signal{}})
	if err != nil {
		log.Print(err)
	}
	go func() {
		for sig := range sigs {
			if sig == syscall.SIGHUP {
				continue // reload the configuration
			}
			sd.Terminate()
		}
	}()
	if err := sd.Wait(context.Background()); err != nil {
		log.Fatal(err)
	}
}

func writeAll(context.Context, []string) error { return nil }
