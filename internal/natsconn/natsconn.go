// Package natsconn connects vclq's commands to NATS from one shared set of flags and
// environment variables: URL, credentials file, nkey seed, TLS.
package natsconn

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// DefaultURL is used when neither --nats nor NATS_URL is given.
const DefaultURL = "nats://127.0.0.1:4222"

// Config says how to reach NATS.
type Config struct {
	// URL of one or more servers, comma separated. default: $NATS_URL, else DefaultURL.
	URL string `json:"url"`
	// Creds is a .creds file (JWT + nkey seed). Optional.
	Creds string `json:"creds,omitempty"`
	// NKey is an nkey seed file. Optional.
	NKey string `json:"nkey,omitempty"`
	// TLSCert and TLSKey are a client certificate and key. Optional.
	TLSCert string `json:"tls_cert,omitempty"`
	TLSKey  string `json:"tls_key,omitempty"`
	// TLSCA verifies the server. Optional.
	TLSCA string `json:"tls_ca,omitempty"`
	// InboxPrefix replaces "_INBOX" in the connection's reply subjects (request
	// replies, PubAcks, pull deliveries), so that the server can let each user
	// subscribe to its own inboxes only (deployments/nats: _INBOX_worker, ...).
	// default: $NATS_INBOX_PREFIX, else "_INBOX".
	InboxPrefix string `json:"inbox_prefix,omitempty"`
	// Name of the connection, shown by the server. default: vclq.
	Name string `json:"name,omitempty"`
	// ConnectTimeout bounds the first connection. default: 5s.
	ConnectTimeout time.Duration `json:"connect_timeout,omitempty"`
}

// RegisterFlags adds --nats, --creds, --nkey, --tls-cert, --tls-key, --tls-ca and
// --inbox-prefix to fs, defaulting from the environment (NATS_URL, NATS_CREDS,
// NATS_NKEY, NATS_INBOX_PREFIX).
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.URL, "nats", envOr("NATS_URL", c.URL, DefaultURL), "NATS server URL(s), comma separated ($NATS_URL)")
	fs.StringVar(&c.Creds, "creds", envOr("NATS_CREDS", c.Creds, ""), "NATS credentials file ($NATS_CREDS)")
	fs.StringVar(&c.NKey, "nkey", envOr("NATS_NKEY", c.NKey, ""), "NATS nkey seed file ($NATS_NKEY)")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "client TLS certificate")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "client TLS key")
	fs.StringVar(&c.TLSCA, "tls-ca", c.TLSCA, "CA that signs the server's certificate")
	fs.StringVar(&c.InboxPrefix, "inbox-prefix", envOr("NATS_INBOX_PREFIX", c.InboxPrefix, ""), "prefix of reply subjects instead of _INBOX, e.g. _INBOX_worker ($NATS_INBOX_PREFIX)")
}

func envOr(name, current, def string) string {
	if current != "" {
		return current
	}
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Connect opens a connection that reconnects forever, logs asynchronous errors (a
// denied publish only shows there) and returns it with a JetStream handle.
func Connect(c Config, log zerolog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	if c.URL == "" {
		c.URL = envOr("NATS_URL", "", DefaultURL)
	}
	if c.Name == "" {
		c.Name = "vclq"
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 5 * time.Second
	}
	opts := []nats.Option{
		nats.Name(c.Name),
		nats.Timeout(c.ConnectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			ev := log.Error().Err(err)
			if s != nil {
				ev = ev.Str("subject", s.Subject)
			}
			ev.Msg("nats asynchronous error")
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: closed on purpose
				log.Warn().Err(err).Msg("nats disconnected")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("nats reconnected")
		}),
	}
	if c.Creds != "" {
		opts = append(opts, nats.UserCredentials(c.Creds))
	}
	if c.NKey != "" {
		o, err := nats.NkeyOptionFromSeed(c.NKey)
		if err != nil {
			return nil, nil, fmt.Errorf("nats nkey %s: %w", c.NKey, err)
		}
		opts = append(opts, o)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return nil, nil, errors.New("nats TLS: --tls-cert and --tls-key go together")
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	if c.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(c.InboxPrefix))
	}
	nc, err := nats.Connect(c.URL, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS at %s: %w", redact(c.URL), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// redact hides credentials in a URL list for error messages.
func redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}
