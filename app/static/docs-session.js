// Keeps the /docs explorer's session like the browser client does: when a call meets
// 401 token_expired, exchange the password flow's refresh token at /auth/token, store the new
// pair in Swagger UI's Authorize state and retry the call once. Loaded between Swagger UI's
// bundle and its bootstrap script: it wraps SwaggerUIBundle to add the response interceptor.
(function () {
  "use strict";
  const SCHEME = "OAuth2PasswordBearer";
  const original = window.SwaggerUIBundle;
  let ui = null;
  let refreshing = null;

  function storedAuth() {
    const all = ui.authSelectors.authorized();
    const auth = all && all.get(SCHEME);
    return auth ? auth.toJS() : null;
  }

  async function refreshOnce(auth) {
    const response = await fetch("/auth/token", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        grant_type: "refresh_token",
        refresh_token: auth.token.refresh_token,
      }),
    });
    if (!response.ok) return null;
    const token = await response.json();
    ui.authActions.authorizeOauth2WithPersistOption({ auth: auth, token: token });
    return token;
  }

  function isTokenExpired(response) {
    const challenge = response.headers && response.headers["www-authenticate"];
    return response.status === 401 && /token_expired/.test(String(challenge || response.text));
  }

  async function retryWithFreshToken(response) {
    const auth = storedAuth();
    if (!auth || !auth.token || !auth.token.refresh_token) return response;
    // Calls that expire together share one refresh: the refresh token rotates on use.
    refreshing = refreshing || refreshOnce(auth).finally(() => { refreshing = null; });
    const token = await refreshing;
    if (!token) return response;
    const request = Object.assign({}, response.request || {});
    if (!request.url) return response;
    request.headers = Object.assign({}, request.headers, {
      Authorization: "Bearer " + token.access_token,
    });
    request.docsRetried = true; // retried once, not again
    return ui.fn.fetch(request);
  }

  const lastRequests = new Map();
  function wrapped(config) {
    ui = original(Object.assign({}, config, {
      requestInterceptor: function (request) {
        lastRequests.set(request.url, request);
        return request;
      },
      responseInterceptor: function (response) {
        if (!isTokenExpired(response) || response.url === undefined) return response;
        const request = lastRequests.get(response.url);
        if (!request || request.docsRetried || /\/auth\/token$/.test(response.url)) {
          return response;
        }
        return retryWithFreshToken(Object.assign({}, response, { request: request }));
      },
    }));
    return ui;
  }
  window.SwaggerUIBundle = Object.assign(wrapped, original);

  // Swagger UI autofocuses the Basic scheme's Username field (IntrospectionClient, for
  // gateways), so the Authorize dialog opened scrolled down to it and a user typed their login
  // there. When the dialog opens, bring the user's own login (the password flow) into view and
  // focus it instead.
  function focusUserLogin(dialog) {
    requestAnimationFrame(function () {
      const username = dialog.querySelector("#oauth_username");
      const content = dialog.querySelector(".modal-ux-content");
      if (!username) return;
      if (content) content.scrollTop = 0;
      username.focus({ preventScroll: true });
    });
  }
  new MutationObserver(function (mutations) {
    for (const mutation of mutations) {
      for (const node of mutation.addedNodes) {
        if (node.nodeType !== 1) continue;
        const dialog = node.matches(".modal-ux") ? node : node.querySelector(".modal-ux");
        if (dialog) focusUserLogin(dialog);
      }
    }
  }).observe(document.documentElement, { childList: true, subtree: true });
})();
