package osconfig

import "context"

// RunForTest runs one command on t over a fresh connection (tests of the runner).
func (c *Client) RunForTest(ctx context.Context, t Target, cmd Command) (Result, error) {
	r, err := c.connect(ctx, t)
	if err != nil {
		return Result{}, err
	}
	defer r.Close()
	return r.Run(ctx, cmd)
}
