package governance

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"time"
)

var userName = regexp.MustCompile(`^[a-z][a-z0-9._-]{0,62}$`)

func requireAdmin(actor *Principal) error {
	if !actor.Has(Admin) {
		return fmt.Errorf("%w: only an admin manages users and tokens", ErrForbidden)
	}
	return nil
}

// AddUser adds a user with roles and returns the user's first token, which
// is shown once: only its SHA-256 is kept. ttl 0 is DefaultTokenTTL.
func (s *Store) AddUser(actor *Principal, name string, roles []Role, ttl time.Duration) (string, error) {
	var tok string
	_, err := s.do(event{actor: actor, entry: Entry{Action: ActUserAdd, User: name}, check: func(st *state, now time.Time) (*payload, error) {
		if err := requireAdmin(actor); err != nil {
			return nil, err
		}
		if !userName.MatchString(name) {
			return nil, fmt.Errorf("%w: user name %q: use a lower-case letter, then letters, digits, '.', '_' or '-'", ErrInvalid, clip(name))
		}
		if st.users[name] != nil {
			return nil, fmt.Errorf("%w: user %s exists; issue a new token with `hub user token`", ErrConflict, name)
		}
		if len(roles) == 0 {
			return nil, fmt.Errorf("%w: give the user at least one role", ErrInvalid)
		}
		var rs []Role
		for _, r := range roles {
			if !slices.Contains(Roles, r) {
				return nil, fmt.Errorf("%w: unknown role %q", ErrInvalid, clip(string(r)))
			}
			if !slices.Contains(rs, r) {
				rs = append(rs, r)
			}
		}
		t, rec, err := newToken(now, ttl)
		if err != nil {
			return nil, err
		}
		tok = t
		return &payload{User: &User{Name: name, Roles: rs, Created: now, Tokens: []*Token{rec}}}, nil
	}})
	return tok, err
}

// IssueToken gives a user a new token (shown once).
func (s *Store) IssueToken(actor *Principal, name string, ttl time.Duration) (string, error) {
	var tok string
	_, err := s.do(event{actor: actor, entry: Entry{Action: ActTokenIssue, User: name}, check: func(st *state, now time.Time) (*payload, error) {
		if err := requireAdmin(actor); err != nil {
			return nil, err
		}
		if st.users[name] == nil {
			return nil, fmt.Errorf("%w: no user %q", ErrNotFound, clip(name))
		}
		t, rec, err := newToken(now, ttl)
		if err != nil {
			return nil, err
		}
		tok = t
		return &payload{Token: rec}, nil
	}})
	return tok, err
}

// TokenTTL checks a token's lifetime in days: 0 for the default, at most
// ten years (a larger count overflowed a duration), for the API's
// token_days and the CLI's --token-days alike.
func TokenTTL(days int) (time.Duration, error) {
	if days < 0 || days > 3660 {
		return 0, fmt.Errorf("%w: token_days must be between 0 (the default) and 3660", ErrInvalid)
	}
	return time.Duration(days) * 24 * time.Hour, nil
}

// RevokeTokens revokes a user's tokens: those with the given IDs, or all
// of them when ids is empty. It returns the IDs revoked.
func (s *Store) RevokeTokens(actor *Principal, name string, ids []string) ([]string, error) {
	var revoked []string
	_, err := s.do(event{actor: actor, entry: Entry{Action: ActTokenRevoke, User: name}, check: func(st *state, now time.Time) (*payload, error) {
		if err := requireAdmin(actor); err != nil {
			return nil, err
		}
		u := st.users[name]
		if u == nil {
			return nil, fmt.Errorf("%w: no user %q", ErrNotFound, clip(name))
		}
		for _, t := range u.Tokens {
			if t.Revoked == nil && (len(ids) == 0 || slices.Contains(ids, t.ID)) {
				revoked = append(revoked, t.ID)
			}
		}
		for _, id := range ids {
			if !slices.Contains(revoked, id) {
				return nil, fmt.Errorf("%w: user %s has no live token %q", ErrNotFound, name, clip(id))
			}
		}
		if len(revoked) == 0 {
			return nil, fmt.Errorf("%w: user %s has no live token", ErrConflict, name)
		}
		return &payload{TokenIDs: revoked}, nil
	}})
	return revoked, err
}

// Users lists the users (admin only), without token hashes.
func (s *Store) Users(actor *Principal) ([]*User, error) {
	if err := requireAdmin(actor); err != nil {
		return nil, s.Refuse(actor, ActRead, "", err)
	}
	var out []*User
	err := s.view(func(st *state) error {
		for _, u := range st.users {
			c := copyOf(u)
			for _, t := range c.Tokens {
				t.SHA256 = ""
			}
			out = append(out, c)
		}
		return nil
	})
	slices.SortFunc(out, func(a, b *User) int { return cmp.Compare(a.Name, b.Name) })
	return out, err
}
