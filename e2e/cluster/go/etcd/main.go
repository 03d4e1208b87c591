// Command etcd is the upstream etcd server, rebuilt from the published
// go.etcd.io/etcd/server/v3 module so the e2e cluster test can run a real
// etcd without downloading a release binary. It only forwards to etcdmain,
// exactly like upstream's own main package does.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
