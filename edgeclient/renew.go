package edgeclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// renewRetry bounds the wait before another renewal attempt after a
// failed one.
const renewRetry = time.Minute

// renewLoop renews the node certificate while Run runs: at a random point
// between 70 % and 90 % of its lifetime it asks the server for a new one
// over the live connection (RenewCertificate, authenticated by the current
// certificate) for a fresh key, and writes the CA bundle, key and
// certificate atomically; the next handshake uses them.
func (c *Client) renewLoop(ctx context.Context) {
	for {
		cert, err := c.certs.get()
		if err != nil || cert.Leaf == nil {
			c.log.Warn("cannot read the client certificate to schedule its renewal", zap.Error(err))
			return
		}
		at := renewalTime(cert.Leaf.NotBefore, cert.Leaf.NotAfter)
		c.log.Debug("certificate renewal scheduled", zap.Time("at", at), zap.Time("not_after", cert.Leaf.NotAfter))
		if !sleepUntil(ctx, at) {
			return
		}
		for {
			err := c.renew(ctx)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			wait := min(renewRetry, max(time.Until(cert.Leaf.NotAfter)/10, time.Second))
			c.log.Warn("certificate renewal failed; retrying", zap.Error(err), zap.Duration("retry_in", wait), zap.Time("not_after", cert.Leaf.NotAfter))
			if !sleepUntil(ctx, time.Now().Add(wait)) {
				return
			}
		}
	}
}

// renewalTime is a random point between 70 % and 90 % of the lifetime.
func renewalTime(notBefore, notAfter time.Time) time.Time {
	life := notAfter.Sub(notBefore)
	return notBefore.Add(time.Duration(float64(life) * (0.7 + 0.2*mathrand.Float64())))
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// renew asks for a new certificate over the current connection, waiting
// for one if the node is not connected.
func (c *Client) renew(ctx context.Context) error {
	cc, err := c.liveConn(ctx)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	csrPEM, err := nodeCSR(key, c.cfg.NodeName)
	if err != nil {
		return err
	}
	callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := edgesyncv1.NewBootstrapServiceClient(cc).RenewCertificate(callCtx, &edgesyncv1.RenewCertificateRequest{CsrPem: csrPEM})
	if err != nil {
		return fmt.Errorf("renew certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	// The CA bundle first: during a CA rotation it gains the new CA,
	// which may sign the server's next certificate.
	if bundle := resp.GetCaBundlePem(); len(bundle) > 0 {
		if err := writeFileAtomic(c.cfg.CAFile, bundle); err != nil {
			return err
		}
	}
	if err := writeCertAndKey(c.cfg.CertFile, c.cfg.KeyFile, resp.GetCertificatePem(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})); err != nil {
		return err
	}
	cert, err := c.certs.get()
	if err != nil {
		return err
	}
	c.updateState(func(s *State) {
		s.CertificateRenewals++
		if cert.Leaf != nil {
			s.CertificateNotAfter = cert.Leaf.NotAfter
		}
	})
	c.log.Info("renewed the client certificate", zap.Time("not_after", resp.GetNotAfter().AsTime()))
	return nil
}

// liveConn returns the connection of the current stream, waiting until
// there is one.
func (c *Client) liveConn(ctx context.Context) (*grpc.ClientConn, error) {
	for {
		ch := c.StateChanged()
		c.mu.Lock()
		cc := c.conn
		c.mu.Unlock()
		if cc != nil {
			return cc, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, errors.Join(errors.New("not connected"), ctx.Err())
		}
	}
}
