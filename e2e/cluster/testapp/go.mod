module lameduck.dev/e2e/cluster/testapp

go 1.25.0
