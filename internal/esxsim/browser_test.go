package esxsim_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vclq/vclq/internal/esxsim"
)

// Searching a datastore folder while other folders in it come and go never fails or
// crashes the process (vcsim's own search panics when an entry vanishes between its
// listing and its stat).
func TestSearchWhileFoldersComeAndGo(t *testing.T) {
	lab := esxsim.StartTB(t, esxsim.Options{})
	h := lab.Hosts[0]
	root := h.DatastoreDir(esxsim.DefaultDatastore)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := h.Observer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := find.NewFinder(c, true)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.SetDatacenter(dc)
	ds, err := f.Datastore(ctx, esxsim.DefaultDatastore)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ds.Browser(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 { // churn: folders created and removed as fast as possible
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				d := filepath.Join(root, fmt.Sprintf("churn%d_%d", w, i%50))
				_ = os.MkdirAll(d, 0o755)
				_ = os.RemoveAll(d)
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	spec := &types.HostDatastoreBrowserSearchSpec{MatchPattern: []string{"*"},
		Query: []types.BaseFileQuery{&types.FileQuery{}, &types.FolderFileQuery{}}}
	deadline := time.Now().Add(2 * time.Second)
	searches := 0
	for time.Now().Before(deadline) {
		task, err := b.SearchDatastore(ctx, "["+esxsim.DefaultDatastore+"]", spec)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := task.WaitForResult(ctx); err != nil {
			t.Fatalf("search %d: %v", searches, err)
		}
		searches++
	}
	if searches < 5 {
		t.Fatalf("only %d searches in 2s", searches)
	}
}
