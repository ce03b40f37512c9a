// etcd's server, as its own release builds it (go.etcd.io/etcd/server/v3's main.go), in a
// module that go build can fetch from the Go module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
