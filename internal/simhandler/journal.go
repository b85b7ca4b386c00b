package simhandler

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vclq/vclq/worker"
)

// Journal records handler begins and ends across processes, and detects overlaps: at
// begin it creates an O_EXCL marker file per computer (slot) in <path>.slots/; finding
// one held by a live process (or by this one) is an OVERLAP. A marker left by a dead
// process (kill -9) is STALE and taken over. Lines are appended with O_APPEND (one
// write per line, so lines of several processes never interleave):
//
//	<unix-nanos> begin|end|OVERLAP|STALE pid=<pid> res=<id> computer=<id> seq=<n> delivery=<n> [outcome=ok|fail|cancelled|leaselost|shutdown]
type Journal struct {
	path, dir string
	f         *os.File
}

// OpenJournal opens (creates) the journal file and its marker directory.
func OpenJournal(path string) (*Journal, error) {
	dir := path + ".slots"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("simhandler journal: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("simhandler journal: %w", err)
	}
	return &Journal{path: path, dir: dir, f: f}, nil
}

func (j *Journal) line(event string, job *worker.Job, extra string) {
	r := job.Request
	s := fmt.Sprintf("%d %s pid=%d res=%d computer=%d seq=%d delivery=%d%s\n",
		time.Now().UnixNano(), event, os.Getpid(), r.Reservation.ID, r.Computer.ID, job.Seq, job.Delivery, extra)
	_, _ = j.f.WriteString(s)
}

// Begin marks the job's slot as in use and returns the function that ends it.
func (j *Journal) Begin(job *worker.Job) (end func(outcome string)) {
	marker := filepath.Join(j.dir, "computer-"+strconv.FormatInt(job.Request.Computer.ID, 10))
	content := fmt.Sprintf("%d %d %d", os.Getpid(), job.Request.Reservation.ID, job.Seq)
	j.line("begin", job, "")
	owned := false
	for attempt := 0; attempt < 2 && !owned; attempt++ {
		f, err := os.OpenFile(marker, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err == nil {
			_, _ = f.WriteString(content)
			_ = f.Close()
			owned = true
			break
		}
		if !errors.Is(err, fs.ErrExist) {
			j.line("OVERLAP", job, " error="+strings.ReplaceAll(err.Error(), " ", "_"))
			break
		}
		holder, _ := os.ReadFile(marker)
		pid, _ := strconv.Atoi(strings.Fields(string(holder) + " 0")[0])
		if pid > 0 && pid != os.Getpid() && !alive(pid) {
			j.line("STALE", job, fmt.Sprintf(" holder=%q", string(holder)))
			_ = os.Remove(marker)
			continue
		}
		j.line("OVERLAP", job, fmt.Sprintf(" holder=%q", string(holder)))
		break
	}
	return func(outcome string) {
		if owned {
			_ = os.Remove(marker)
		}
		j.line("end", job, " outcome="+outcome)
	}
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Report summarises a journal.
type Report struct {
	Begins   int
	Ends     map[string]int // by outcome
	Overlaps []string       // the OVERLAP lines
	Stale    int
	// OKByReservation counts successful ends per reservation.
	OKByReservation map[int64]int
}

// ReadJournal reads and summarises the journal at path.
func ReadJournal(path string) (Report, error) {
	rep := Report{Ends: map[string]int{}, OKByReservation: map[int64]int{}}
	f, err := os.Open(path)
	if err != nil {
		return rep, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kv := map[string]string{}
		for _, f := range fields[2:] {
			if k, v, ok := strings.Cut(f, "="); ok {
				kv[k] = v
			}
		}
		switch fields[1] {
		case "begin":
			rep.Begins++
		case "end":
			rep.Ends[kv["outcome"]]++
			if kv["outcome"] == "ok" {
				res, _ := strconv.ParseInt(kv["res"], 10, 64)
				rep.OKByReservation[res]++
			}
		case "OVERLAP":
			rep.Overlaps = append(rep.Overlaps, sc.Text())
		case "STALE":
			rep.Stale++
		}
	}
	return rep, sc.Err()
}
