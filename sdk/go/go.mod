module github.com/lameduck-dev/lameduck/sdk/go

go 1.22
