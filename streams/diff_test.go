package streams

import (
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestCompareConfigs(t *testing.T) {
	base := jetstream.StreamConfig{Name: "S", Subjects: []string{"a", "b"}, Replicas: 1, MaxAge: time.Hour, MaxMsgs: -1}
	tests := []struct {
		name     string
		found    func(*jetstream.StreamConfig)
		expected func(*jetstream.StreamConfig)
		skip     []string
		want     []Difference
	}{
		{name: "same"},
		{name: "replicas", found: func(c *jetstream.StreamConfig) { c.Replicas = 3 },
			want: []Difference{{Asset: "stream S", Field: "num_replicas", Found: "3", Expected: "1"}}},
		{name: "duration shown as such", found: func(c *jetstream.StreamConfig) { c.MaxAge = time.Minute },
			want: []Difference{{Asset: "stream S", Field: "max_age", Found: "1m0s", Expected: "1h0m0s"}}},
		{name: "subjects in order", found: func(c *jetstream.StreamConfig) { c.Subjects = []string{"b", "a"} },
			want: []Difference{{Asset: "stream S", Field: "subjects", Found: "[b a]", Expected: "[a b]"}}},
		{name: "omitempty zero is the server's default", found: func(c *jetstream.StreamConfig) { c.Description = "server's" }},
		{name: "non-omitempty zero is compared", found: func(c *jetstream.StreamConfig) { c.MirrorDirect = true },
			want: []Difference{{Asset: "stream S", Field: "mirror_direct", Found: "true", Expected: "false"}}},
		{name: "nil equals empty", found: func(c *jetstream.StreamConfig) { c.Metadata = map[string]string{} },
			expected: func(c *jetstream.StreamConfig) { c.Metadata = nil }},
		{name: "skipped field", found: func(c *jetstream.StreamConfig) { c.Metadata = map[string]string{"_nats.level": "1"} },
			expected: func(c *jetstream.StreamConfig) { c.Metadata = map[string]string{"k": "v"} }, skip: []string{"metadata"}},
		{name: "pointer", found: func(c *jetstream.StreamConfig) { c.Placement = &jetstream.Placement{Cluster: "x"} },
			expected: func(c *jetstream.StreamConfig) { c.Placement = &jetstream.Placement{Cluster: "y"} },
			want:     []Difference{{Asset: "stream S", Field: "placement", Found: "{Cluster:x Tags:[]}", Expected: "{Cluster:y Tags:[]}"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			found, expected := base, base
			found.Subjects = append([]string(nil), base.Subjects...)
			if tc.found != nil {
				tc.found(&found)
			}
			if tc.expected != nil {
				tc.expected(&expected)
			}
			got := compareConfigs("stream S", found, expected, tc.skip...)
			t.Logf("%d differences: %v", len(got), got)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("compareConfigs = %+v, want %+v", got, tc.want)
			}
		})
	}
}
