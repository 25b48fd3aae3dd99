module github.com/lameduck-dev/lameduck/examples/go-web

go 1.22

require github.com/lameduck-dev/lameduck/sdk/go v0.0.0

replace github.com/lameduck-dev/lameduck/sdk/go => ../../sdk/go
