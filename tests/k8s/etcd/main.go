// etcd for the end-to-end tests' API server: the server of the etcd release
// that this Kubernetes release is tested with (go.mod), as etcd's own main runs it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
