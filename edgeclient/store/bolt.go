package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// FileName is the name of the database file inside a store directory.
const FileName = "edgesync.db"

var objectsBucket = []byte("objects")

// Bolt is a Store in a bbolt database file. Every Apply is one fsynced
// transaction, so what the store says it holds survives power loss.
type Bolt struct {
	db  *bolt.DB
	len atomic.Int64
}

// Options tune Open.
type Options struct {
	// ReadOnly opens the store for reading, as `edgesync-agent list` does.
	ReadOnly bool
	// LockTimeout bounds the wait for another process that has the store
	// open; zero means one second.
	LockTimeout time.Duration
}

// Open opens (creating when needed, unless read-only) the store in dir.
func Open(dir string, opts Options) (*Bolt, error) {
	path := filepath.Join(dir, FileName)
	if opts.ReadOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("open store %s: %w", path, err)
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create store directory %s: %w", dir, err)
	}
	timeout := opts.LockTimeout
	if timeout == 0 {
		timeout = time.Second
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, ReadOnly: opts.ReadOnly})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open store %s: another process (a running agent?) has it open", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Bolt{db: db}
	err = s.init(!opts.ReadOnly)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return s, nil
}

func (s *Bolt) init(writable bool) error {
	if writable {
		if err := s.db.Update(func(tx *bolt.Tx) error {
			_, err := tx.CreateBucketIfNotExists(objectsBucket)
			return err
		}); err != nil {
			return err
		}
	}
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(objectsBucket)
		if b == nil {
			return nil
		}
		s.len.Store(int64(b.Stats().KeyN))
		return nil
	})
}

// encodeKey orders keys by kind, namespace and name: two bytes of kind,
// then namespace, a zero byte, and name.
func encodeKey(k Key) []byte {
	b := make([]byte, 2, 3+len(k.Namespace)+len(k.Name))
	binary.BigEndian.PutUint16(b, uint16(k.Kind))
	b = append(b, k.Namespace...)
	b = append(b, 0)
	return append(b, k.Name...)
}

func decodeKey(b []byte) (Key, error) {
	if len(b) < 3 {
		return Key{}, fmt.Errorf("malformed key %q", b)
	}
	ns, name, ok := bytes.Cut(b[2:], []byte{0})
	if !ok {
		return Key{}, fmt.Errorf("malformed key %q", b)
	}
	return Key{Kind: edgesyncv1.Kind(binary.BigEndian.Uint16(b)), Namespace: string(ns), Name: string(name)}, nil
}

// Get implements Store.
func (s *Bolt) Get(key Key) (*Record, error) {
	var r *Record
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(objectsBucket)
		if b == nil {
			return nil
		}
		v := b.Get(encodeKey(key))
		if v == nil {
			return nil
		}
		var err error
		r, err = decodeValue(key, v, true)
		return err
	})
	return r, err
}

func (s *Bolt) each(kind edgesyncv1.Kind, withData bool, fn func(*Record)) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(objectsBucket)
		if b == nil {
			return nil
		}
		var prefix []byte
		if kind != edgesyncv1.Kind_KIND_UNSPECIFIED {
			prefix = binary.BigEndian.AppendUint16(nil, uint16(kind))
		}
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			key, err := decodeKey(k)
			if err != nil {
				return err
			}
			r, err := decodeValue(key, v, withData)
			if err != nil {
				return err
			}
			fn(r)
		}
		return nil
	})
}

// List implements Store.
func (s *Bolt) List(kind edgesyncv1.Kind) ([]*Record, error) {
	var out []*Record
	err := s.each(kind, true, func(r *Record) { out = append(out, r) })
	return out, err
}

// Refs implements Store.
func (s *Bolt) Refs() ([]*edgesyncv1.ObjectRef, error) {
	out := make([]*edgesyncv1.ObjectRef, 0, s.Len())
	err := s.each(edgesyncv1.Kind_KIND_UNSPECIFIED, false, func(r *Record) { out = append(out, r.Ref()) })
	return out, err
}

// Apply implements Store.
func (s *Bolt) Apply(changes []Change) error {
	var delta int64
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(objectsBucket)
		delta = 0
		for _, c := range changes {
			k := encodeKey(c.Key)
			existed := b.Get(k) != nil
			if c.Record == nil {
				if existed {
					delta--
					if err := b.Delete(k); err != nil {
						return err
					}
				}
				continue
			}
			if !existed {
				delta++
			}
			if err := b.Put(k, encodeValue(c.Record)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("update store: %w", err)
	}
	s.len.Add(delta)
	return nil
}

// Len implements Store.
func (s *Bolt) Len() int { return int(s.len.Load()) }

// Close implements Store.
func (s *Bolt) Close() error { return s.db.Close() }
