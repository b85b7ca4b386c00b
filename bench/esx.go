package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/internal/esxsim"
	"github.com/vclq/vclq/messages"
)

// ESX measures a load with a linked clone against a load with a full copy of a 1 GiB
// base disk on a simulated ESX host whose datastore is a real directory, beside a raw
// `cp` of the same bytes as the physical anchor.
func ESX(ctx context.Context, w io.Writer) error {
	const (
		baseSize = 1 << 30
		runs     = 9
		img      = "bench-base"
	)
	dir, err := os.MkdirTemp("", "vclq-bench-esx-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lab, err := esxsim.Start(ctx, esxsim.Options{Dir: dir})
	if err != nil {
		return err
	}
	defer lab.Close()
	h := lab.Hosts[0]
	if _, err := h.SeedImage(esxsim.DefaultDatastore, "", img, baseSize); err != nil {
		return err
	}
	c, err := hypervisor.New(h.HostConfig())
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))

	profile := func(disk string) hypervisor.Profile {
		return hypervisor.Profile{DatastorePath: "/vmfs/volumes/" + esxsim.DefaultDatastore, Switch0: "virtualswitch0", Switch1: "virtualswitch1", VMDisk: disk}
	}
	spec := func(disk string) hypervisor.LoadSpec {
		return hypervisor.LoadSpec{
			Slot:    hypervisor.Slot{ComputerID: 1, ShortName: "bench1", RAMMB: 1024, CPUs: 1, Eth0MAC: "00:50:56:00:00:01", Eth1MAC: "00:50:56:00:00:02"},
			Profile: profile(disk),
			Image:   hypervisor.Image{ID: 1, Name: img, RevisionID: 1, Revision: 0, MinRAMMB: 1024, MinCPUs: 1, OSType: messages.OSLinux},
		}
	}
	load := func(disk string) (time.Duration, error) {
		s := spec(disk)
		start := time.Now()
		if err := c.Load(ctx, s, nil); err != nil {
			return 0, err
		}
		d := time.Since(start)
		return d, c.Remove(ctx, s.Slot, s.Profile) // not timed: the next run starts empty
	}
	dsDir := h.DatastoreDir(esxsim.DefaultDatastore)
	rawCopy := func() (time.Duration, error) {
		dst := filepath.Join(dsDir, "rawcp")
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return 0, err
		}
		defer os.RemoveAll(dst)
		start := time.Now()
		out, err := exec.CommandContext(ctx, "cp",
			filepath.Join(dsDir, img, img+".vmdk"), filepath.Join(dsDir, img, img+"-flat.vmdk"), dst).CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("cp: %v: %s", err, out)
		}
		return time.Since(start), nil
	}

	// Warm up (session, caches), then interleave the three so that drift and page
	// cache writeback affect each alike.
	if _, err := load(messages.VMDiskShared); err != nil {
		return err
	}
	// The SOAP calls of one linked load (a second one: the session and caches are warm).
	linkedCalls := 0
	var linkedByMethod []string
	{
		s := spec(messages.VMDiskShared)
		before := h.CallsByMethod()
		if err := c.Load(ctx, s, nil); err != nil {
			return err
		}
		for m, n := range h.CallsByMethod() {
			if d := n - before[m]; d > 0 {
				linkedCalls += d
				linkedByMethod = append(linkedByMethod, fmt.Sprintf("%s %d", m, d))
			}
		}
		slices.Sort(linkedByMethod)
		if err := c.Remove(ctx, s.Slot, s.Profile); err != nil {
			return err
		}
	}
	var linked, full, cp []time.Duration
	for i := range runs {
		order := []int{0, 1, 2}
		for j := 0; j < i%3; j++ {
			order = append(order[1:], order[0])
		}
		for _, k := range order {
			// Start each measurement without dirty pages from the previous one, so
			// writeback throttling does not land on whichever runs next.
			syscall.Sync()
			var d time.Duration
			var err error
			switch k {
			case 0:
				d, err = load(messages.VMDiskShared)
				linked = append(linked, d)
			case 1:
				d, err = load(messages.VMDiskDedicated)
				full = append(full, d)
			case 2:
				d, err = rawCopy()
				cp = append(cp, d)
			}
			if err != nil {
				return err
			}
		}
	}

	ml, mf, mc := esxMedian(linked), esxMedian(full), esxMedian(cp)
	// Each round measured all three back to back: the ratio within a round cancels
	// slow drift of the machine; the verdict uses the median of those paired ratios.
	var pairSpeedup, pairOverCP []float64
	for i := range full {
		pairSpeedup = append(pairSpeedup, float64(full[i])/float64(linked[i]))
		pairOverCP = append(pairOverCP, float64(full[i])/float64(cp[i]))
	}
	speedup, overCP := esxMedianF(pairSpeedup), esxMedianF(pairOverCP)
	medSpeedup, medOverCP := float64(mf)/float64(ml), float64(mf)/float64(mc)
	minSpeedup := float64(slices.Min(full)) / float64(slices.Min(linked))
	minOverCP := float64(slices.Min(full)) / float64(slices.Min(cp))
	fmt.Fprintf(w, "## ESX load: linked clone vs full copy\n\n")
	fmt.Fprintf(w, "One simulated standalone ESX host (vcsim, ESX mode, `internal/esxsim`) whose datastore is a real "+
		"directory on the local disk; a 1 GiB base disk (`%s-flat.vmdk`). Each run loads the slot with `hypervisor.ESX.Load` "+
		"(remove slot VMs, check space, disk, create VM with two NICs and metadata, power on) over HTTPS with a pinned "+
		"thumbprint, then removes it (not timed). `vmdisk=shared` makes a child delta disk of the shared base (linked clone); "+
		"`vmdisk=dedicated` copies the base with CopyVirtualDisk into a temporary folder and moves it into the VM folder. "+
		"The anchor is `cp` of the same descriptor and flat file on the same file system. %d runs each, interleaved (rotating order), after one warm-up load; `sync` before each measurement (not timed).\n\n", img, runs)
	fmt.Fprintf(w, "| method | median | min | max |\n|---|---:|---:|---:|\n")
	for _, r := range []struct {
		name string
		ds   []time.Duration
	}{{"load, linked clone", linked}, {"load, full copy", full}, {"raw `cp` of the 1 GiB disk", cp}} {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", r.name, esxRound(esxMedian(r.ds)), esxRound(slices.Min(r.ds)), esxRound(slices.Max(r.ds)))
	}
	fmt.Fprintf(w, "\n| ratio | median of per-round ratios | of medians | of minimums | target | met |\n|---|---:|---:|---:|---:|---|\n")
	fmt.Fprintf(w, "| full-copy load / linked-clone load | %.1f× | %.1f× | %.1f× | ≥ 20× | %s |\n", speedup, medSpeedup, minSpeedup, esxYesNo(speedup >= 20))
	fmt.Fprintf(w, "| full-copy load / raw cp | %.2f× | %.2f× | %.2f× | ≤ 1.3× | %s |\n\n", overCP, medOverCP, minOverCP, esxYesNo(overCP <= 1.3))
	fmt.Fprintf(w, "A linked-clone load moves no disk data: its time is the load's %d SOAP calls over loopback HTTPS "+
		"(%s: image and slot listing, space check, VM folder, CreateVM with the child disk in its spec, PowerOn, task results). "+
		"A full-copy load adds the copy of the whole base; vcsim's CopyVirtualDisk (here `internal/esxsim`'s) copies with "+
		"`io.Copy` between files, which on Linux is `copy_file_range`, the same system call `cp` (coreutils 9) uses, so the "+
		"copy runs at the file system's speed and the rest is the linked load's round trips. Both copies write into the "+
		"page cache without `fsync`; the spread between runs is other work on this shared machine (writeback, other tests), "+
		"which is why the verdict uses the median of the ratios within each round (the three measured back to back) and medians and minimums are shown beside it. On real ESX a full copy of a 1 GiB disk on VMFS takes seconds "+
		"to minutes, while a linked clone stays at the cost of its round trips.\n", linkedCalls, strings.Join(linkedByMethod, ", "))
	if speedup < 20 {
		fmt.Fprintf(w, "\n**The 20× target was missed.** The full copy of 1 GiB costs only %s here (the page cache absorbs it), "+
			"while the linked-clone load is bounded below by its round trips (%s), so the ratio cannot reach 20× on this "+
			"machine without a slower (real) datastore.\n", esxRound(mf-ml), esxRound(ml))
	}
	if overCP > 1.3 {
		fmt.Fprintf(w, "\n**The 1.3× target was missed**: the full-copy load costs %s more than `cp`; "+
			"the difference is the load's API round trips and VM setup (%s for the linked load) on a noisy shared machine.\n",
			esxRound(mf-mc), esxRound(ml))
	}
	fmt.Fprintln(w)
	return nil
}

func esxMedian(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func esxMedianF(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func esxRound(d time.Duration) time.Duration {
	if d > 10*time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

func esxYesNo(b bool) string {
	if b {
		return "yes"
	}
	return "**no**"
}
