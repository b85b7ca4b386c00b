// Package promtest scrapes a /metrics endpoint in tests and reads the numbers with the
// Prometheus text parser.
package promtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families are one scrape's metric families by name.
type Families map[string]*dto.MetricFamily

// Get fetches url and returns the status code and body (bounded by 5s).
func Get(url string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Scrape fetches http://addr/metrics and parses it with the text parser.
func Scrape(t testing.TB, addr string) Families {
	t.Helper()
	f, err := TryScrape(addr)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TryScrape is Scrape returning the error.
func TryScrape(addr string) (Families, error) {
	code, body, err := Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", addr, err)
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: status %d: %s", addr, code, body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("parse the scrape of %s: %w", addr, err)
	}
	return fams, nil
}

// match reports whether m has every label pair of kv (name, value, name, value...).
func match(m *dto.Metric, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == kv[i] && l.GetValue() == kv[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// Value sums the counter, gauge or untyped values of name's series that carry the
// label pairs kv.
func (f Families) Value(name string, kv ...string) float64 {
	var v float64
	fam := f[name]
	if fam == nil {
		return 0
	}
	for _, m := range fam.GetMetric() {
		if !match(m, kv) {
			continue
		}
		switch {
		case m.Counter != nil:
			v += m.GetCounter().GetValue()
		case m.Gauge != nil:
			v += m.GetGauge().GetValue()
		case m.Untyped != nil:
			v += m.GetUntyped().GetValue()
		}
	}
	return v
}

// Count sums the sample counts of histogram name's series that carry kv.
func (f Families) Count(name string, kv ...string) uint64 {
	var n uint64
	if fam := f[name]; fam != nil {
		for _, m := range fam.GetMetric() {
			if match(m, kv) && m.Histogram != nil {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}

// Series counts the series of every family whose name starts with prefix (a
// histogram's series is one, whatever its buckets).
func (f Families) Series(prefix string) int {
	n := 0
	for name, fam := range f {
		if strings.HasPrefix(name, prefix) {
			n += len(fam.GetMetric())
		}
	}
	return n
}

// Names lists the family names that start with prefix, sorted.
func (f Families) Names(prefix string) []string {
	var out []string
	for name := range f {
		if strings.HasPrefix(name, prefix) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// LabelValues maps each label name of the families starting with prefix to the
// values it takes.
func (f Families) LabelValues(prefix string) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for name, fam := range f {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		for _, m := range fam.GetMetric() {
			for _, l := range m.GetLabel() {
				if out[l.GetName()] == nil {
					out[l.GetName()] = map[string]bool{}
				}
				out[l.GetName()][l.GetValue()] = true
			}
		}
	}
	return out
}

// idLike matches a label value that looks like an id (a reservation, request or
// computer number, a stream sequence).
var idLike = regexp.MustCompile(`^[0-9]+$|[0-9]{3,}`)

// CheckBounded fails t unless every label of the families starting with prefix is in
// allowed and takes only values allowed accepts, no value looks like an id, and there
// are at most maxSeries series. It returns the number of series.
func CheckBounded(t testing.TB, f Families, prefix string, allowed map[string]func(string) bool, maxSeries int) int {
	t.Helper()
	for label, values := range f.LabelValues(prefix) {
		ok := allowed[label]
		if ok == nil {
			t.Errorf("%s*: label %q is not one of the bounded labels", prefix, label)
			continue
		}
		for v := range values {
			if idLike.MatchString(v) {
				t.Errorf("%s*: label %s=%q looks like an id", prefix, label, v)
			}
			if !ok(v) {
				t.Errorf("%s*: label %s=%q is not an allowed value", prefix, label, v)
			}
		}
	}
	n := f.Series(prefix)
	if n > maxSeries {
		t.Errorf("%s*: %d series, want at most %d", prefix, n, maxSeries)
	}
	return n
}

// OneOf accepts the listed values.
func OneOf(values ...string) func(string) bool {
	return func(v string) bool {
		for _, x := range values {
			if v == x {
				return true
			}
		}
		return false
	}
}
